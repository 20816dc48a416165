package stemdriver

import "errors"

// ErrBadConfig is matched (errors.Is) by every error that says a backend's
// configuration is wrong rather than that its service cannot be reached: an
// unknown or not yet supported URL scheme, a malformed URL, an unknown URL
// option or a bad option value, a database number the server refuses, or
// credentials it rejects. Retrying such an error cannot help, so the CLI
// exits 78 (EX_CONFIG) on it and 69 (EX_UNAVAILABLE) on other open errors.
var ErrBadConfig = errors.New("stem: bad configuration")

// BadConfig returns err marked as a configuration error: the result matches
// ErrBadConfig and err itself (errors.Is, errors.As), and its text is err's,
// unchanged. BadConfig(nil) is nil.
func BadConfig(err error) error {
	if err == nil {
		return nil
	}
	return &configError{err: err}
}

// configError is an error marked by BadConfig.
type configError struct{ err error }

func (e *configError) Error() string   { return e.err.Error() }
func (e *configError) Unwrap() []error { return []error{e.err, ErrBadConfig} }
