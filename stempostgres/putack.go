package stempostgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

var _ stemdriver.ResultAcker = (*Broker)(nil)

// AcksWith implements stemdriver.ResultAcker: rb is a *Results of the same
// database and schema opened in this process (it shares b's pool), and
// neither b nor rb is an InTx view.
func (b *Broker) AcksWith(rb stemdriver.ResultBackend) bool {
	r, ok := rb.(*Results)
	return ok && r != nil && b.parent == nil && r.parent == nil && r.s == b.s
}

// PutAck implements stemdriver.ResultAcker: the results' upsert and the
// acknowledgements' deletes go to the server as one pipeline that commits
// once (an implicit transaction: an error in any statement rolls back
// all), so that a worker records a batch's outcomes and acknowledges its
// deliveries in one round trip and one commit. Results of one id are
// folded first as Put would apply them in order (the first final one
// wins, else the last), so that the upsert is one statement whose rows
// are locked in one order.
func (b *Broker) PutAck(ctx context.Context, rb stemdriver.ResultBackend, results []*stemtype.TaskResult, ds []stemdriver.Delivery) error {
	if !b.AcksWith(rb) {
		return fmt.Errorf("stem: postgres broker: put and ack: %T is not a result backend of this broker's pool", rb)
	}
	r := rb.(*Results)
	batch, puts, err := b.resultsBatch(r, results)
	if err != nil {
		return err
	}
	queues, ids, claims, _ := held(ds) // receipts not ours are reported lost below
	for start := 0; start < len(ids); start += finishMax {
		end := min(start+finishMax, len(ids))
		batch.Queue(b.s.q.ack, b.ns, queues[start:end], ids[start:end], claims[start:end])
	}
	if batch.Len() == 0 {
		return nil
	}
	done := make(map[string]bool, len(ids))
	if err := b.sendPutAck(ctx, batch, puts, done); err != nil {
		return b.errorf(err, "put %d results and ack %d deliveries", len(results), len(ds))
	}
	if puts > 0 {
		r.maybePrune()
	}
	var lost []string
	for _, d := range ds {
		if !done[d.Receipt] {
			lost = append(lost, d.Receipt)
		}
		delete(done, d.Receipt) // the same delivery twice: the second is lost
	}
	if len(lost) > 0 {
		return fmt.Errorf("stem: postgres broker: put and ack: %d of %d deliveries no longer held (first %s): %w", len(lost), len(ds), lost[0], stemdriver.ErrLeaseLost)
	}
	return nil
}

// sendPutAck sends the pipeline of PutAck and reads its replies: puts
// upserts first, then the acks' rows into done.
func (b *Broker) sendPutAck(ctx context.Context, batch *pgx.Batch, puts int, done map[string]bool) (err error) {
	br := b.db.SendBatch(ctx, batch)
	defer func() { err = errors.Join(err, br.Close()) }()
	for range puts {
		if _, err := br.Exec(); err != nil {
			return err
		}
	}
	for range batch.Len() - puts {
		rows, err := br.Query()
		if err != nil {
			return err
		}
		for rows.Next() {
			var id int64
			var c int32
			if err := rows.Scan(&id, &c); err != nil {
				rows.Close()
				return err
			}
			done[receipt(id, c)] = true
		}
		if err := rows.Err(); err != nil {
			return err
		}
	}
	return nil
}

// foldResults returns results with each id once, holding what applying
// them in order would leave: the first final result of an id, else its
// last.
func foldResults(results []*stemtype.TaskResult) []*stemtype.TaskResult {
	out := make([]*stemtype.TaskResult, 0, len(results))
	at := make(map[string]int, len(results))
	for _, res := range results {
		if res == nil {
			out = append(out, res) // refused by resultGroups
			continue
		}
		i, ok := at[res.ID]
		switch {
		case !ok:
			at[res.ID] = len(out)
			out = append(out, res)
		case !out[i].State.Final():
			out[i] = res
		}
	}
	return out
}

var _ stemdriver.PendingPublisher = (*Broker)(nil)

// PublishWithResults implements stemdriver.PendingPublisher where AcksWith
// does (rb shares b's pool) and no result is final: the results' upsert
// and the envelopes' inserts go to the server as one pipeline that commits
// once (an implicit transaction), so that a client records its tasks'
// pending states and publishes them in one round trip and one commit, and
// a failure leaves neither. Idle Claims are notified after the commit, as
// by Publish. Otherwise it returns false and does nothing.
func (b *Broker) PublishWithResults(ctx context.Context, rb stemdriver.ResultBackend, results []*stemtype.TaskResult, envs []*stemtype.Envelope) (bool, error) {
	if !b.AcksWith(rb) {
		return false, nil
	}
	for _, res := range results {
		if res == nil || res.ID == "" || res.State.Final() {
			return false, nil
		}
	}
	return true, b.putPublish(ctx, rb.(*Results), results, envs)
}

// putPublish is PublishWithResults's write.
func (b *Broker) putPublish(ctx context.Context, r *Results, results []*stemtype.TaskResult, envs []*stemtype.Envelope) error {
	batch, puts, err := b.resultsBatch(r, results)
	if err != nil {
		return err
	}
	p, err := encodePublish(envs)
	if err != nil {
		return err
	}
	for start := 0; start < len(envs); start += publishChunk {
		batch.Queue(b.s.q.publish, p.args(b.ns, start, min(start+publishChunk, len(envs)), "")...)
	}
	if batch.Len() == 0 {
		return nil
	}
	br := b.db.SendBatch(ctx, batch)
	for range batch.Len() {
		if _, err = br.Exec(); err != nil {
			break
		}
	}
	if err = errors.Join(err, br.Close()); err != nil {
		return b.errorf(err, "put %d results and publish %d envelopes", len(results), len(envs))
	}
	if puts > 0 {
		r.maybePrune()
	}
	b.notifyPublished(p.queues)
	return nil
}

// resultsBatch checks that b and r are open and returns a batch that
// starts with the upsert of results (folded, so one statement at most),
// and how many statements it holds.
func (b *Broker) resultsBatch(r *Results, results []*stemtype.TaskResult) (*pgx.Batch, int, error) {
	if err := errors.Join(b.checkOpen(), r.checkOpen()); err != nil {
		return nil, 0, err
	}
	groups, err := resultGroups(foldResults(results))
	if err != nil {
		return nil, 0, err
	}
	batch := &pgx.Batch{}
	for _, g := range groups {
		batch.Queue(r.s.q.putResults, r.ns, g.ids, g.states, g.bodies, r.ttlMicros())
	}
	return batch, len(groups), nil
}
