package stemurl

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/stem-go/stem/stemdriver"
)

// Flags are connection URLs given on a command line (the CLI's --broker,
// --backend and --revoke-store). Each one that is set wins over its
// environment variable; empty means not given.
type Flags struct {
	Broker, Results, Revokes string
}

// Sources of a URL, as URLs.BrokerFrom, ResultsFrom and RevokesFrom name
// them when no environment variable gave it: a command-line flag, or the
// embedded default.
const (
	FromBrokerFlag  = "--broker"
	FromResultsFlag = "--backend"
	FromRevokesFlag = "--revoke-store"
	FromDefault     = "default"
)

// source is one place a URL may come from.
type source struct{ from, value string }

// first returns the first source with a value, else def.
func first(def string, sources ...source) (string, string) {
	for _, s := range sources {
		if s.value != "" {
			return s.value, s.from
		}
	}
	return def, FromDefault
}

// Resolve is the one place that decides which URL each store is opened
// from, given the command line's flags and the environment (getenv is
// os.Getenv in programs). The first of each list that is set wins:
//
//	broker:         --broker, STEM_BROKER_URL, Default(getenv)
//	result backend: --backend, STEM_RESULT_BACKEND_URL, --broker, STEM_BROKER_URL, Default(getenv)
//	revoke store:   --revoke-store, STEM_REVOKE_STORE_URL, --backend, STEM_RESULT_BACKEND_URL,
//	                --broker, STEM_BROKER_URL, Default(getenv)
//
// So a flag overrides its own variable, and a store without a URL of its
// own shares the next store's. The control transport always uses the
// broker's URL. Each URL's source is recorded in URLs (BrokerFrom,
// ResultsFrom, RevokesFrom) for messages.
func Resolve(getenv func(string) string, f Flags) URLs {
	broker := []source{{FromBrokerFlag, f.Broker}, {EnvBroker, getenv(EnvBroker)}}
	results := append([]source{{FromResultsFlag, f.Results}, {EnvResults, getenv(EnvResults)}}, broker...)
	revokes := append([]source{{FromRevokesFlag, f.Revokes}, {EnvRevokeStore, getenv(EnvRevokeStore)}}, results...)
	def := Default(getenv)
	var u URLs
	u.Broker, u.BrokerFrom = first(def, broker...)
	u.Results, u.ResultsFrom = first(def, results...)
	u.Revokes, u.RevokesFrom = first(def, revokes...)
	return u
}

// Role is a set of the four stores a program opens: a broker, a result
// backend, a revoke store and a control transport.
type Role uint8

// The roles, to be combined with |.
const (
	RoleBroker Role = 1 << iota
	RoleResults
	RoleRevokes
	RoleControl
	// AllRoles are the four roles a worker needs.
	AllRoles = RoleBroker | RoleResults | RoleRevokes | RoleControl
)

// roleOrder is the order Open opens roles in; Close closes them in reverse.
var roleOrder = []Role{RoleBroker, RoleResults, RoleRevokes, RoleControl}

// String names the role (several roles: their names joined with "+").
func (r Role) String() string {
	var names []string
	for _, one := range roleOrder {
		if r&one == 0 {
			continue
		}
		switch one {
		case RoleBroker:
			names = append(names, "broker")
		case RoleResults:
			names = append(names, "result backend")
		case RoleRevokes:
			names = append(names, "revoke store")
		case RoleControl:
			names = append(names, "control transport")
		}
	}
	if len(names) == 0 {
		return "no role"
	}
	return strings.Join(names, "+")
}

// OpenError is the failure to open one role. It matches
// stemdriver.ErrBadConfig when the URL can never work (a retry cannot
// help); otherwise the store could not be reached. Its text shows the URL
// redacted.
type OpenError struct {
	// Role is the role that could not be opened.
	Role Role
	// URL is the URL it was opened from, redacted.
	URL string
	// From is where the URL came from (see Resolve), e.g. STEM_BROKER_URL.
	From string
	// Err is the driver's error.
	Err error
}

// Error says what could not be opened from which URL, and why: "cannot
// open broker URL: reason". The control transport is opened from the
// broker's URL and reported as the broker; a revoke store names where its
// URL came from, since it may fall back to another store's.
func (e *OpenError) Error() string {
	what := e.Role.String()
	switch e.Role {
	case RoleControl:
		what = "broker"
	case RoleRevokes:
		what = "revoke store (from " + e.From + ")"
	}
	return fmt.Sprintf("cannot open %s %s: %v", what, e.URL, e.Err)
}

// Unwrap returns Err.
func (e *OpenError) Unwrap() error { return e.Err }

// Opened holds the stores Resolver.Open opened (the zero value is not
// usable). A role that was not asked for is nil. Close it when done. An Opened is not safe for concurrent use by Add
// and Close; the stores it holds are.
type Opened struct {
	// URLs are the URLs the stores were opened from.
	URLs URLs
	// Broker is set when RoleBroker was opened.
	Broker stemdriver.Broker
	// Results is set when RoleResults was opened.
	Results stemdriver.ResultBackend
	// Revokes is set when RoleRevokes was opened.
	Revokes stemdriver.RevokeStore
	// Control is set when RoleControl was opened.
	Control stemdriver.ControlTransport

	r       *Resolver
	opts    stemdriver.Options
	closers []roleCloser
}

type roleCloser struct {
	role  Role
	close func() error
}

// Open opens exactly the given roles from u with opts, in the order
// broker, result backend, revoke store, control transport (which uses
// u.Broker). When roles include the revoke store, u.Check runs first, so a
// revoke store that cannot be durable beside the broker is refused before
// anything is opened. When a role fails to open, Open closes what it
// opened and returns an *OpenError (joined with any error of that close),
// or Check's error; either matches stemdriver.ErrBadConfig when the
// configuration can never work.
func (r *Resolver) Open(ctx context.Context, u URLs, roles Role, opts stemdriver.Options) (*Opened, error) {
	o := &Opened{URLs: u, r: r, opts: opts}
	if roles&RoleRevokes != 0 {
		if err := u.Check(); err != nil {
			return nil, err
		}
	}
	if err := o.Add(ctx, roles); err != nil {
		return nil, withClose(err, o.Close())
	}
	return o, nil
}

// Add opens the given roles that o does not hold yet, from o.URLs, in
// Open's order: for a store a command can do without (the CLI's revoke
// works without a result backend). On failure it returns an *OpenError and
// leaves o as it was: what Add opened before the failure is closed (any
// error of that close is joined to the one returned).
func (o *Opened) Add(ctx context.Context, roles Role) error {
	mark := len(o.closers)
	for _, role := range roleOrder {
		if roles&role == 0 || o.has(role) {
			continue
		}
		if err := o.open(ctx, role); err != nil {
			return withClose(err, o.closeFrom(mark))
		}
	}
	return nil
}

// withClose returns err, joined with closeErr when closing what was opened
// before err failed too.
func withClose(err, closeErr error) error {
	if closeErr == nil {
		return err
	}
	return errors.Join(err, closeErr)
}

// has reports whether o holds role.
func (o *Opened) has(role Role) bool {
	for _, c := range o.closers {
		if c.role == role {
			return true
		}
	}
	return false
}

// open opens one role.
func (o *Opened) open(ctx context.Context, role Role) error {
	var (
		url, from = o.URLs.Broker, o.URLs.BrokerFrom
		closer    func() error
		err       error
	)
	switch role {
	case RoleResults:
		url, from = o.URLs.Results, o.URLs.ResultsFrom
	case RoleRevokes:
		url, from = o.URLs.Revokes, o.URLs.RevokesFrom
	}
	if from == FromDefault {
		if err := prepareDefault(url); err != nil {
			return &OpenError{Role: role, URL: Redact(url), From: from, Err: err}
		}
	}
	switch role {
	case RoleBroker:
		var b stemdriver.Broker
		if b, err = o.r.OpenBroker(ctx, url, o.opts); err == nil {
			o.Broker, closer = b, b.Close
		}
	case RoleResults:
		var res stemdriver.ResultBackend
		if res, err = o.r.OpenResults(ctx, url, o.opts); err == nil {
			o.Results, closer = res, res.Close
		}
	case RoleRevokes:
		var rev stemdriver.RevokeStore
		if rev, err = o.r.OpenRevokes(ctx, url, o.opts); err == nil {
			o.Revokes, closer = rev, rev.Close
		}
	case RoleControl:
		var ctl stemdriver.ControlTransport
		if ctl, err = o.r.OpenControl(ctx, url, o.opts); err == nil {
			o.Control, closer = ctl, ctl.Close
		}
	}
	if err != nil {
		return &OpenError{Role: role, URL: Redact(url), From: from, Err: err}
	}
	o.closers = append(o.closers, roleCloser{role, closer})
	return nil
}

// Close closes every store o holds, in the reverse order of opening, and
// returns their errors joined, each naming its role; nil when all closed
// cleanly. The fields of the closed roles become nil. Closing again is a
// no-op.
func (o *Opened) Close() error {
	if o == nil {
		return nil
	}
	return o.closeFrom(0)
}

// closeFrom closes the stores opened from closers[mark] on.
func (o *Opened) closeFrom(mark int) error {
	var errs []error
	for i := len(o.closers) - 1; i >= mark; i-- {
		c := o.closers[i]
		if err := c.close(); err != nil {
			errs = append(errs, fmt.Errorf("stem: close %s: %w", c.role, err))
		}
		switch c.role {
		case RoleBroker:
			o.Broker = nil
		case RoleResults:
			o.Results = nil
		case RoleRevokes:
			o.Revokes = nil
		case RoleControl:
			o.Control = nil
		}
	}
	o.closers = o.closers[:mark]
	return errors.Join(errs...)
}
