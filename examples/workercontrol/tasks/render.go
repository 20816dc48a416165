package tasks

import "github.com/stem-go/stem"

// RenderArgs are the arguments of images.render.
type RenderArgs struct {
	Tiles int `json:"tiles"`
}

// RegisterRender registers images.render as an isolated task: the worker
// runs RenderImage in a child process of its own (package isolated).
func RegisterRender(reg *stem.Registry) {
	stem.Register(reg, "images.render", RenderImage, stem.TaskOptions{MaxRetries: 0, Isolated: true})
}

// RenderImage renders tiles in a child process of the worker. The child
// hears of a terminate revoke only through its checkpoints: every fifth
// tile it sends a heartbeat and its progress, and either returns an error
// matching stem.ErrTaskRevoked once the task was terminated.
func RenderImage(tc *stem.TaskContext, a RenderArgs) (any, error) {
	sum := 0
	for i := range a.Tiles {
		sum += renderTile(i)
		if i%5 == 0 {
			if err := tc.Heartbeat(); err != nil {
				return nil, err
			}
			if err := tc.Progress(100*float64(i)/float64(a.Tiles), nil); err != nil {
				return nil, err
			}
		}
	}
	return map[string]int{"tiles": a.Tiles, "checksum": sum}, nil
}

// renderTile stands for the real work of one tile.
func renderTile(i int) int { return i * i % 251 }
