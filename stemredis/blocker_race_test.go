package stemredis_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stem-go/stem"
	"github.com/stem-go/stem/internal/testutil"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemredis"
)

// The first blocking claims of one Broker, made at once (several workers
// of a process sharing the broker, or one worker's fetch beside another
// caller), each open a dedicated go-redis Conn. go-redis (v9.23.0) gives
// every Conn the client's *Options but a lock of its own, and the first
// handshake of a Conn against a server without maintenance notifications
// writes Options.MaintNotificationsConfig.Mode (auto mode falls back to
// disabled, redis.go initConn) while the other Conns read it under their
// own locks: a data race the race detector reports. Found by the system
// suite's broadcast case on Redis (three workers sharing one broker);
// stemredis turns maintenance notifications off.
func TestBlockingClaimsOfFreshBrokerDoNotRace(t *testing.T) {
	url := testutil.NeedRedis(t)
	ns := "blkrace" + stem.NewTaskID()[:8]
	testutil.CleanupNamespace(t, url, ns)
	// Each round opens a fresh broker, whose first Conns race anew; the
	// race detector sees the race in some rounds only.
	for range 20 {
		b, err := stemredis.OpenBroker(context.Background(), url, stemdriver.Options{Namespace: ns})
		if err != nil {
			t.Fatal(err)
		}
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := range 16 {
			wg.Go(func() {
				<-start
				_, err := b.Claim(context.Background(), stemdriver.ClaimRequest{Queues: []string{"default"},
					Consumer: fmt.Sprint("c", i), Max: 1, Lease: time.Second, Wait: 20 * time.Millisecond})
				if err != nil {
					t.Error(err)
				}
			})
		}
		close(start)
		wg.Wait()
		_ = b.Close()
	}
}
