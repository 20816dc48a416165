package stemredis

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

var _ stemdriver.RevokePublisher = (*Control)(nil)

// PublishesWith implements stemdriver.RevokePublisher: rs is a *Revokes on
// the same server and database as c, as the same user.
func (c *Control) PublishesWith(rs stemdriver.RevokeStore) bool {
	r, ok := rs.(*Revokes)
	return ok && r != nil && sameServer(c.rdb, r.rdb)
}

// UpsertPublish implements stemdriver.RevokePublisher with one script run:
// the upsert of Revokes.Upsert, then the PUBLISH of msg to targets'
// channels (as Publish would) only when every record kept the version it
// proposed. Records of several namespaces, or more than one script run
// takes, are stored with Upsert and not published: the caller publishes
// then.
func (c *Control) UpsertPublish(ctx context.Context, rs stemdriver.RevokeStore, recs []stemtype.RevokeRecord, targets []string, msg []byte) ([]stemtype.RevokeRecord, bool, error) {
	if !c.PublishesWith(rs) {
		return nil, false, fmt.Errorf("stem: redis control: upsert and publish: %T is not a revoke store on this transport's server and database", rs)
	}
	r := rs.(*Revokes)
	if err := errors.Join(c.checkOpen(), r.checkOpen()); err != nil {
		return nil, false, err
	}
	if len(recs) == 0 {
		return []stemtype.RevokeRecord{}, false, nil
	}
	ns := recs[0].Namespace
	if len(recs) > revokeChunk || slices.ContainsFunc(recs, func(r stemtype.RevokeRecord) bool { return r.Namespace != ns }) {
		stored, err := r.Upsert(ctx, recs...)
		return stored, false, err
	}
	var channels []string
	if len(targets) == 0 || slices.Contains(targets, stemtype.BroadcastTarget) {
		channels = []string{broadcastChannel(c.ns, c.db)}
	} else {
		for _, t := range targets {
			if ch := workerChannel(c.ns, c.db, t); !slices.Contains(channels, ch) {
				channels = append(channels, ch)
			}
		}
	}
	args := make([]any, 0, len(channels)+2+4*len(recs))
	args = append(args, len(channels))
	for _, ch := range channels {
		args = append(args, ch)
	}
	args = append(args, msg)
	for i := range recs {
		a, err := revokeArgs(&recs[i])
		if err != nil {
			return nil, false, err
		}
		args = append(args, a...)
	}
	k := newRevokeKeys(ns)
	vals, err := revokeUpsertPublishScript.run(ctx, c.rdb, k.upsertKeys(), args...).StringSlice()
	if err != nil {
		return nil, false, c.errorf(err, "upsert %d revoke records and publish", len(recs))
	}
	if len(vals) != len(recs)+1 {
		return nil, false, c.errorf(fmt.Errorf("%d replies for %d records", len(vals), len(recs)), "upsert and publish")
	}
	out := slices.Clone(recs)
	for i, v := range vals[:len(recs)] {
		ver, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return nil, false, c.errorf(fmt.Errorf("version %q assigned to task %q: %w", v, recs[i].TaskID, err), "upsert and publish")
		}
		out[i].Version = ver
	}
	return out, vals[len(recs)] == "1", nil
}
