package stemcli

import (
	"strings"

	"github.com/stem-go/stem"
)

// The variables that configure signing keys (docs/signing.md): a
// comma-separated list, or a file of one key a line. The first key signs;
// every key verifies.
const (
	envSigningKey     = "STEM_SIGNING_KEY"
	envSigningKeyFile = "STEM_SIGNING_KEY_FILE"
)

// signingKeys returns the signing keys the environment configures, nil
// when it configures none. A key too short or too uniform, an empty item,
// an unreadable file, or both variables set, is a configuration error
// (exit 78). Its message never shows a key.
func (a *app) signingKeys() (*stem.SigningKeys, error) {
	list, file := a.cfg.Getenv(envSigningKey), a.cfg.Getenv(envSigningKeyFile)
	var k *stem.SigningKeys
	var err error
	switch {
	case list != "" && file != "":
		return nil, exitf(ExitConfig, "%s and %s are both set: set one of them", envSigningKey, envSigningKeyFile)
	case list != "":
		if k, err = stem.ParseSigningKeys(list); err != nil {
			return nil, exitf(ExitConfig, "%s: %s", envSigningKey, strings.TrimPrefix(err.Error(), "stem: "))
		}
	case file != "":
		if k, err = stem.ReadSigningKeyFile(file); err != nil {
			return nil, exitf(ExitConfig, "%s: %s", envSigningKeyFile, strings.TrimPrefix(err.Error(), "stem: "))
		}
	}
	return k, nil
}
