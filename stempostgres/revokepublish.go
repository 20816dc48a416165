package stempostgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

var _ stemdriver.RevokePublisher = (*Control)(nil)

// PublishesWith implements stemdriver.RevokePublisher: rs is a *Revokes of
// the same database and schema opened in this process (it shares c's
// pool).
func (c *Control) PublishesWith(rs stemdriver.RevokeStore) bool {
	r, ok := rs.(*Revokes)
	return ok && r != nil && r.s == c.s
}

// UpsertPublish implements stemdriver.RevokePublisher with one statement:
// the upsert of Revokes.Upsert, and a NOTIFY of msg on the command channel
// that the same statement sends only when every record kept the version it
// proposed, delivered when the upsert commits. Records that repeat a task,
// or a message too large for a notification, are stored with Upsert and
// not published: the caller publishes then.
func (c *Control) UpsertPublish(ctx context.Context, rs stemdriver.RevokeStore, recs []stemtype.RevokeRecord, targets []string, msg []byte) ([]stemtype.RevokeRecord, bool, error) {
	if !c.PublishesWith(rs) {
		return nil, false, fmt.Errorf("stem: postgres control: upsert and publish: %T is not a revoke store of this transport's pool", rs)
	}
	r := rs.(*Revokes)
	if err := errors.Join(c.checkOpen(), r.checkOpen()); err != nil {
		return nil, false, err
	}
	if len(recs) == 0 {
		return []stemtype.RevokeRecord{}, false, nil
	}
	groups, err := revokeGroups(recs)
	if err != nil {
		return nil, false, err
	}
	if slices.Contains(targets, stemtype.BroadcastTarget) || targets == nil {
		targets = []string{}
	}
	tj, err := json.Marshal(targets)
	if err != nil {
		return nil, false, fmt.Errorf("stem: postgres control: publish: encode targets: %w", err)
	}
	payload, inline := inlinePayload(tj, msg)
	if len(groups) > 1 || !inline {
		stored, err := r.Upsert(ctx, recs...)
		return stored, false, err
	}
	out := slices.Clone(recs)
	g := groups[0]
	sql, args := c.s.q.revokeNotify, append(g.args(), c.cmdChannel, payload)
	if len(recs) == 1 {
		sql, args = c.s.q.revokeOne, []any{g.nss[0], g.tasks[0], g.versions[0], g.bodies[0], g.expires[0], c.cmdChannel, payload}
	}
	notified, err := r.upsertNotifyEarly(ctx, sql, args, g, recs, out)
	if err != nil {
		return nil, false, err
	}
	return out, notified > 0, nil
}
