package jsonvalue

import (
	"encoding/json"
	"math"
	"strings"
	"testing"
)

// args stands for stem.Args: a raw-JSON []byte type with a MarshalJSON
// method that would compact (and turn empty into null) if Encode let
// json.Marshal handle it.
type args json.RawMessage

func (a args) MarshalJSON() ([]byte, error) {
	if len(a) == 0 {
		return []byte("null"), nil
	}
	return a, nil
}

type blob []byte

type point struct{ X, Y int }

func TestEncode(t *testing.T) {
	var nilPtr *point
	cases := []struct {
		name    string
		in      any
		want    string // "" with wantNil means nil
		wantNil bool
		wantErr string
	}{
		{name: "nil", in: nil, wantNil: true},
		{name: "raw nil", in: json.RawMessage(nil), wantNil: true},
		{name: "raw empty", in: json.RawMessage{}, wantNil: true},
		{name: "raw kept byte for byte", in: json.RawMessage(`{ "a" : 1 }`), want: `{ "a" : 1 }`},
		{name: "raw null", in: json.RawMessage(`null`), want: `null`},
		{name: "raw invalid", in: json.RawMessage(`{bad`), wantErr: "json.RawMessage is not valid JSON"},
		{name: "raw type nil", in: args(nil), wantNil: true},
		{name: "raw type empty", in: args{}, wantNil: true},
		{name: "raw type kept byte for byte", in: args(`[1, 2]`), want: `[1, 2]`},
		{name: "raw type invalid", in: args(`[1,`), wantErr: "jsonvalue.args is not valid JSON"},
		{name: "bytes are a value", in: []byte("hi"), want: `"aGk="`},
		{name: "named bytes are a value", in: blob("hi"), want: `"aGk="`},
		{name: "empty bytes are a value", in: []byte{}, want: `""`},
		{name: "string", in: "x", want: `"x"`},
		{name: "number", in: 42, want: `42`},
		{name: "struct", in: point{1, 2}, want: `{"X":1,"Y":2}`},
		{name: "typed nil pointer", in: nilPtr, want: `null`},
		{name: "map", in: map[string]int{"b": 2, "a": 1}, want: `{"a":1,"b":2}`},
		{name: "unmarshalable", in: func() {}, wantErr: "unsupported type"},
		{name: "NaN", in: math.NaN(), wantErr: "unsupported value"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := Encode[args](c.in)
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("Encode(%#v) error = %v, want containing %q", c.in, err, c.wantErr)
				}
				if strings.HasPrefix(err.Error(), "stem:") {
					t.Fatalf("error %q has the stem: prefix; callers add it", err)
				}
				if got != nil {
					t.Fatalf("Encode(%#v) = %q with an error, want nil", c.in, got)
				}
				return
			}
			if err != nil {
				t.Fatalf("Encode(%#v): %v", c.in, err)
			}
			if c.wantNil {
				if got != nil {
					t.Fatalf("Encode(%#v) = %q, want nil", c.in, got)
				}
				return
			}
			if string(got) != c.want {
				t.Fatalf("Encode(%#v) = %q, want %q", c.in, got, c.want)
			}
		})
	}
}

// TestEncodeRawMessageInstance checks that json.RawMessage may stand for Raw
// (the duplicate type-switch case resolves to the first one).
func TestEncodeRawMessageInstance(t *testing.T) {
	got, err := Encode[json.RawMessage](json.RawMessage(`{"a":1}`))
	if err != nil || string(got) != `{"a":1}` {
		t.Fatalf("got %q, %v", got, err)
	}
	_, err = Encode[json.RawMessage](json.RawMessage(`x`))
	if err == nil || !strings.Contains(err.Error(), "not valid JSON") {
		t.Fatalf("invalid raw: err = %v", err)
	}
}
