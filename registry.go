package stem

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/stem-go/stem/stemtype"
)

// Args are a task's arguments as a JSON document.
type Args json.RawMessage

// Decode unmarshals the arguments into v. Empty arguments leave v unchanged.
func (a Args) Decode(v any) error {
	if len(a) == 0 || string(a) == "null" {
		return nil
	}
	if err := json.Unmarshal(a, v); err != nil {
		return fmt.Errorf("stem: decode task arguments: %w", err)
	}
	return nil
}

// UnmarshalJSON stores a copy of data, unchanged: Args decode as the JSON
// document they hold, as they encode, also as a field of a handler's
// argument type.
func (a *Args) UnmarshalJSON(data []byte) error {
	if a == nil {
		return errors.New("stem: Args.UnmarshalJSON on a nil pointer")
	}
	*a = append((*a)[:0], data...)
	return nil
}

// MarshalJSON returns the arguments unchanged.
func (a Args) MarshalJSON() ([]byte, error) {
	if len(a) == 0 {
		return []byte("null"), nil
	}
	return a, nil
}

// TaskOptions configure how a task is queued and run. The zero value is
// usable: queue "default", no retries, the worker's lease, no time limit,
// run inline in the worker's process.
type TaskOptions struct {
	// Queue the task is published to unless the enqueue call names one.
	Queue string
	// MaxRetries is how many times a failed attempt is retried. Zero means
	// the first failure is final.
	MaxRetries int
	// RetryPolicy chooses the delay before each retry. Nil means
	// DefaultRetryPolicy().
	RetryPolicy RetryPolicy
	// Lease is how long a claimed task stays invisible to other workers
	// between renewals. The worker renews it while the task runs; it only
	// matters when the worker dies. Zero means the worker's Lease.
	Lease time.Duration
	// TimeLimit bounds one attempt: past it the task's context is
	// cancelled with cause ErrTimeLimit and the attempt fails. Zero means
	// no limit.
	TimeLimit time.Duration
	// Priority orders tasks within a queue where the broker supports it.
	Priority int
	// Isolated runs the task in a child process of the worker rather than
	// in the worker's own process, so that a crash, a leak or a handler
	// that ignores cancellation cannot harm the worker: a terminate revoke
	// with a kill-after kills the child. The worker needs an Executor
	// (package isolated), and the program must register the task the same
	// way in both roles, since the child looks it up by name. See package
	// isolated.
	Isolated bool
}

// Task is a registered task, as Registry.Lookup returns it and an Executor
// receives it. Register builds tasks; their fields are read-only.
type Task struct {
	// Name identifies the task; producers enqueue by name.
	Name string
	// Options are the task's defaults.
	Options TaskOptions
	// Run is the handler of a task run in the worker's process; nil for
	// an isolated task.
	Run func(tc *TaskContext, args Args) (any, error)
	// Isolated is the entrypoint of a task whose Options.Isolated is set,
	// run in a child process of the worker; nil for an inline task.
	Isolated func(tc *TaskContext, args Args) (any, error)
}

// IsIsolated reports whether the task runs in a child process.
func (t *Task) IsIsolated() bool { return t.Isolated != nil }

// Registry maps task names to tasks. It is safe for concurrent use. There is
// no global registry: programs build one, fill it with Register, and pass
// it to workers and clients.
type Registry struct {
	mu    sync.RWMutex
	tasks map[string]*Task
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry {
	return &Registry{tasks: make(map[string]*Task)}
}

// add registers t. It returns an error for an empty name, a task with no
// handler, a negative MaxRetries or a name already registered.
func (r *Registry) add(t Task) error {
	if t.Name == "" {
		return fmt.Errorf("stem: register task: empty name")
	}
	if t.Run == nil && t.Isolated == nil {
		return fmt.Errorf("stem: register task %q: nil handler", t.Name)
	}
	if t.Options.MaxRetries < 0 {
		return fmt.Errorf("stem: register task %q: Options.MaxRetries is negative", t.Name)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.tasks[t.Name]; ok {
		return fmt.Errorf("stem: register task %q: already registered", t.Name)
	}
	r.tasks[t.Name] = &t
	return nil
}

// Register adds the task name to r: fn runs it with its arguments decoded
// from JSON into A (an A of type Args receives them as they are), under
// the defaults in opts. Arguments that do not decode into A fail the task
// without retries. With opts.Isolated, fn is the entrypoint run in a child
// process of the worker (see package isolated).
//
// Register is called while a program starts, and it panics on a
// programming error: an empty name, a nil fn, a negative opts.MaxRetries,
// or a name already registered in r.
func Register[A any](r *Registry, name string, fn func(tc *TaskContext, args A) (any, error), opts TaskOptions) {
	t := Task{Name: name, Options: opts}
	if fn != nil {
		if opts.Isolated {
			t.Isolated = typedRun(fn)
		} else {
			t.Run = typedRun(fn)
		}
	}
	if err := r.add(t); err != nil {
		panic(err)
	}
}

// typedRun decodes a task's arguments into A before it calls fn.
func typedRun[A any](fn func(tc *TaskContext, args A) (any, error)) func(*TaskContext, Args) (any, error) {
	return func(tc *TaskContext, raw Args) (any, error) {
		var a A
		if err := raw.Decode(&a); err != nil {
			return nil, NoRetry(err)
		}
		return fn(tc, a)
	}
}

// Lookup returns the task registered under name.
func (r *Registry) Lookup(name string) (*Task, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	t, ok := r.tasks[name]
	return t, ok
}

// Names returns the registered task names, sorted.
func (r *Registry) Names() []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	names := make([]string, 0, len(r.tasks))
	for n := range r.tasks {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Queues returns the distinct queues named by registered tasks' options
// ("default" for those that name none), sorted.
func (r *Registry) Queues() []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	var qs []string
	for _, t := range r.tasks {
		q := t.Options.Queue
		if q == "" {
			q = stemtype.DefaultQueue
		}
		if !slices.Contains(qs, q) {
			qs = append(qs, q)
		}
	}
	sort.Strings(qs)
	return qs
}
