package stemurl_test

import (
	"context"
	"fmt"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemurl"
)

// Resolve the URLs from flags and the environment, open the stores a
// producer needs, and close them.
func ExampleResolver_Open() {
	env := map[string]string{stemurl.EnvBroker: "memory://demo"}
	u := stemurl.Resolve(func(k string) string { return env[k] }, stemurl.Flags{Results: "memory://demo"})
	o, err := stemurl.New().Open(context.Background(), u, stemurl.RoleBroker|stemurl.RoleResults, stemdriver.Options{Namespace: "stem"})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("broker", o.URLs.Broker, "from", o.URLs.BrokerFrom)
	fmt.Println("results", o.URLs.Results, "from", o.URLs.ResultsFrom)
	fmt.Println("revoke store opened:", o.Revokes != nil)
	fmt.Println("close:", o.Close())
	// Output:
	// broker memory://demo from STEM_BROKER_URL
	// results memory://demo from --backend
	// revoke store opened: false
	// close: <nil>
}
