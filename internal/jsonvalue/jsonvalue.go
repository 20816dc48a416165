// Package jsonvalue encodes "a value that is any Go value or raw JSON", the
// one rule shared by task results (inline and isolated) and task arguments.
package jsonvalue

import (
	"encoding/json"
	"fmt"
)

// Encode returns v as a JSON document, or nil when v carries no value.
//
// The rule, the same for task results and task arguments:
//   - nil, and a json.RawMessage or Raw that is empty (nil or zero length),
//     carry no value: Encode returns nil and no error.
//   - A non-empty json.RawMessage or Raw is already JSON: it must be valid
//     and is returned byte for byte (not compacted or re-indented).
//   - Anything else, []byte included, is a Go value passed to json.Marshal,
//     so a []byte becomes a base64 JSON string as encoding/json encodes it.
//
// Raw names the caller's own raw-JSON type (stem.Args), which this package
// cannot import; pass json.RawMessage when there is none.
//
// Errors carry no "stem:" prefix and name no subject: callers wrap them with
// what was being encoded (a task result, a task's arguments).
func Encode[Raw ~[]byte](v any) (json.RawMessage, error) {
	switch r := v.(type) {
	case nil:
		return nil, nil
	case json.RawMessage:
		return raw(v, r)
	case Raw:
		return raw(v, r)
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return b, nil
}

func raw(v any, r []byte) (json.RawMessage, error) {
	if len(r) == 0 {
		return nil, nil
	}
	if !json.Valid(r) {
		return nil, fmt.Errorf("%T is not valid JSON", v)
	}
	return json.RawMessage(r), nil
}
