package stemtype

// StoreInfo names the backends a worker was opened on, as URLs with every
// secret redacted, so that logs and stats show at a glance when a CLI and
// a fleet resolved different stores. A program that opened its drivers
// itself may describe them in any words, or leave StoreInfo out.
type StoreInfo struct {
	Broker  string `json:"broker"`
	Results string `json:"results"`
	Revokes string `json:"revokes"`
	Control string `json:"control"`
}
