package stem

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/stem-go/stem/internal/jsonvalue"
	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// ClientConfig configures a Client.
type ClientConfig struct {
	// Broker receives enqueued tasks. Required to enqueue; a Client
	// without one only reads task states (Status, Wait), from Results.
	Broker stemdriver.Broker
	// Results, when set, records each task as pending before it is
	// published and serves Status and Wait.
	Results stemdriver.ResultBackend
	// Registry, when set, supplies each task's default options (queue,
	// max retries, priority) by name.
	Registry *Registry
	// Logger defaults to slog.Default.
	Logger *slog.Logger
	// SigningKeys, when set, sign every envelope published (the first
	// key), so that workers with the same keys run it (see
	// docs/signing.md). Optional.
	SigningKeys *SigningKeys
	// MaxPayload is the largest task arguments, in bytes of their JSON
	// encoding, that Enqueue and EnqueueBatch accept: a larger one fails
	// the call with an *EnqueueError matching ErrPayloadTooLarge, and
	// nothing is written. Default: DefaultMaxPayload (1 MiB); negative:
	// no limit. Keep it at most the workers' WorkerConfig.MaxPayload.
	MaxPayload int
}

// Client enqueues tasks and reads their state. It is safe for concurrent
// use.
type Client struct {
	broker  stemdriver.Broker
	results stemdriver.ResultBackend
	reg     *Registry
	logger  *slog.Logger
	commits committer    // group commit of concurrent Enqueue calls
	keys    *SigningKeys // nil: envelopes are not signed
	maxArgs int          // ClientConfig.MaxPayload; 0: no limit
}

// NewClient returns a Client; it fails when cfg has neither a Broker nor
// Results.
func NewClient(cfg ClientConfig) (*Client, error) {
	if cfg.Broker == nil && cfg.Results == nil {
		return nil, errors.New("stem: ClientConfig.Broker is nil")
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.Default()
	}
	c := &Client{broker: cfg.Broker, results: cfg.Results, reg: cfg.Registry, logger: logger, keys: cfg.SigningKeys,
		maxArgs: payloadLimit(cfg.MaxPayload)}
	c.commits.store, c.commits.pending, c.commits.maxStores = c.storeTasks, cfg.Results != nil, enqueueStores
	return c, nil
}

// EnqueueOptions override a task's registered options for one enqueue.
// The zero value keeps them all.
type EnqueueOptions struct {
	// ID sets the task id; empty means a new random id.
	ID string
	// Queue overrides the task's queue.
	Queue string
	// Countdown delays the task by this long.
	Countdown time.Duration
	// ETA delays the task until this time; it wins over Countdown.
	ETA time.Time
	// MaxRetries, when non-nil, overrides the task's MaxRetries.
	MaxRetries *int
	// Priority overrides the task's priority when non-zero.
	Priority int
	// Headers are carried in the envelope.
	Headers map[string]string
}

// EnqueueRequest is one task of an EnqueueBatch call.
type EnqueueRequest struct {
	Task    string
	Args    any
	Options EnqueueOptions
}

// EnqueueError is the error of an EnqueueBatch (or Enqueue) that assigned
// ids to its tasks and then failed to record or publish them: it carries
// the ids, so that the caller can retry with the same ones
// (EnqueueOptions.ID) rather than enqueue the tasks a second time under
// new ids.
//
// Retrying with the same ids keeps one recorded outcome per task, but a
// task published twice is two messages and may run twice: retry only the
// requests whose Published entry is false when it is known, and write
// tasks to be idempotent, as under any at-least-once delivery. The second
// run of a duplicate cannot change the recorded final state (succeeded,
// failed, cancelled): the first final state wins in every result backend,
// so Wait and Get report the first run's outcome. A redelivery of one
// message (an expired lease, a lost acknowledgement) of a task already
// final is acknowledged without running.
type EnqueueError struct {
	// IDs are the ids assigned to the requests, in request order.
	IDs []string
	// Published says, per request, whether the broker stored its task.
	// It is nil when that is unknown: the broker's Publish failed and may
	// have stored some of the batch (brokers cannot say which). When the
	// pending states could not be recorded, nothing was published and
	// every entry is false.
	Published []bool
	// Err is the failure of the result backend or the broker.
	Err error
}

// Error describes the failure and how many tasks it concerns.
func (e *EnqueueError) Error() string {
	if e.Published == nil {
		return fmt.Sprintf("%v (%d task(s), unknown which were published)", e.Err, len(e.IDs))
	}
	n := 0
	for _, p := range e.Published {
		if p {
			n++
		}
	}
	return fmt.Sprintf("%v (%d of %d task(s) published)", e.Err, n, len(e.IDs))
}

// Unwrap returns Err.
func (e *EnqueueError) Unwrap() error { return e.Err }

// Enqueue publishes one task and returns its id. args are encoded as JSON
// (a json.RawMessage or Args is used as is). When the task got an id but
// may not have been published, the error is an *EnqueueError carrying it.
//
// Concurrent Enqueue calls of one Client are stored together, as one
// EnqueueBatch would store them (a group commit): a call that finds no
// store under way stores its task at once, and calls that arrive meanwhile
// are stored together when it ends, so many goroutines enqueueing one task
// each cost a few round trips, not one each. A failure of a group's store
// fails every call of the group, each with an *EnqueueError of its own id.
// A call whose ctx ends before its group is stored returns an
// *EnqueueError saying its task was not published; once its group is
// being stored, it waits for the outcome.
func (c *Client) Enqueue(ctx context.Context, task string, args any, opts EnqueueOptions) (string, error) {
	if c.broker == nil {
		return "", errNoBroker
	}
	now := time.Now().UTC()
	env, err := c.envelope(EnqueueRequest{Task: task, Args: args, Options: opts}, now)
	if err != nil {
		return "", err
	}
	if err := c.checkPayload(env); err != nil {
		return "", &EnqueueError{IDs: []string{env.ID}, Published: []bool{false}, Err: err}
	}
	// From this call's context: the group's store runs in another's.
	env.Headers = injectTrace(ctx, env.Headers)
	op := &enqueueOp{env: env, now: now, wake: make(chan bool, 1)}
	stored, err := c.commits.submit(ctx, op)
	switch {
	case err == nil:
		return env.ID, nil
	case !stored:
		return "", &EnqueueError{IDs: []string{env.ID}, Published: []bool{false}, Err: fmt.Errorf("stem: enqueue: %w", err)}
	}
	return "", enqueueError([]string{env.ID}, err)
}

var errNoBroker = errors.New("stem: enqueue: the client has no broker (ClientConfig.Broker is nil)")

// EnqueueBatch publishes several tasks in as few round trips as the broker
// allows and returns their ids in order.
//
// When ctx carries a valid OpenTelemetry span, its span context travels
// in each envelope's headers (W3C Trace Context: traceparent,
// tracestate), so that a worker that traces (WorkerConfig.TracerProvider)
// runs the task in a child span of it.
//
// A request that cannot be encoded fails the call before anything is
// stored, with no ids; so does one whose arguments are larger than
// ClientConfig.MaxPayload, with an *EnqueueError that matches
// ErrPayloadTooLarge, carries the ids assigned and says none was
// published. When recording the pending states or publishing
// fails, EnqueueBatch returns the ids it assigned together with an
// *EnqueueError that says which tasks were published (or that this is
// unknown); retry with the same ids, see EnqueueError.
func (c *Client) EnqueueBatch(ctx context.Context, reqs []EnqueueRequest) ([]string, error) {
	if len(reqs) == 0 {
		return nil, nil
	}
	if c.broker == nil {
		return nil, errNoBroker
	}
	now := time.Now().UTC()
	envs := make([]*stemtype.Envelope, len(reqs))
	ids := make([]string, len(reqs))
	for i, r := range reqs {
		env, err := c.envelope(r, now)
		if err != nil {
			return nil, err
		}
		env.Headers = injectTrace(ctx, env.Headers)
		envs[i], ids[i] = env, env.ID
	}
	for _, env := range envs {
		if err := c.checkPayload(env); err != nil {
			return nil, &EnqueueError{IDs: ids, Published: make([]bool, len(ids)), Err: err}
		}
	}
	var pend []*stemtype.TaskResult
	if c.results != nil {
		pend = make([]*stemtype.TaskResult, len(envs))
		for i, e := range envs {
			pend[i] = pendingOf(e, now)
		}
	}
	if err := c.storeTasks(ctx, envs, pend); err != nil {
		return ids, enqueueError(ids, err)
	}
	return ids, nil
}

func (c *Client) envelope(r EnqueueRequest, now time.Time) (*stemtype.Envelope, error) {
	if r.Task == "" {
		return nil, errors.New("stem: enqueue: empty task name")
	}
	args, err := jsonvalue.Encode[Args](r.Args)
	if err != nil {
		return nil, fmt.Errorf("stem: enqueue %s: encode arguments: %w", r.Task, err)
	}
	var topts TaskOptions
	if c.reg != nil {
		if t, ok := c.reg.Lookup(r.Task); ok {
			topts = t.Options
		}
	}
	o := r.Options
	env := &stemtype.Envelope{
		ID:        o.ID,
		Task:      r.Task,
		Args:      args,
		Queue:     firstNonEmpty(o.Queue, topts.Queue, stemtype.DefaultQueue),
		Priority:  topts.Priority,
		Headers:   o.Headers,
		CreatedAt: now,
	}
	if env.ID == "" {
		env.ID = NewTaskID()
	} else if err := stemtype.CheckTaskID(env.ID); err != nil {
		return nil, fmt.Errorf("stem: enqueue %s: %w", r.Task, err)
	}
	if o.Priority != 0 {
		env.Priority = o.Priority
	}
	if o.MaxRetries != nil {
		if *o.MaxRetries < 0 {
			return nil, fmt.Errorf("stem: enqueue %s: negative MaxRetries", r.Task)
		}
		n := *o.MaxRetries
		env.MaxRetries = &n
	}
	switch {
	case !o.ETA.IsZero():
		env.NotBefore = o.ETA.UTC()
	case o.Countdown > 0:
		env.NotBefore = now.Add(o.Countdown)
	}
	return env, nil
}

// Status returns the task's recorded state, or an error matching ErrNotFound.
func (c *Client) Status(ctx context.Context, id string) (*stemtype.TaskResult, error) {
	if c.results == nil {
		return nil, errors.New("stem: task status needs a result backend")
	}
	return c.results.Get(ctx, id)
}

// Wait polls the task's state until it is final or ctx ends.
func (c *Client) Wait(ctx context.Context, id string) (*stemtype.TaskResult, error) {
	delay := 5 * time.Millisecond
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("stem: wait for task %s: %w", id, context.Cause(ctx))
		case <-t.C:
		}
		res, err := c.Status(ctx, id)
		switch {
		case err == nil && res.State.Final():
			return res, nil
		case err != nil && !errors.Is(err, ErrNotFound):
			return nil, err
		}
		t.Reset(delay)
		delay = min(delay*2, 250*time.Millisecond)
	}
}

// NewTaskID returns a random 128-bit id in hex.
func NewTaskID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func firstNonEmpty(ss ...string) string {
	for _, s := range ss {
		if s != "" {
			return s
		}
	}
	return ""
}
