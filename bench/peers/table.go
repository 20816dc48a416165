package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
)

// printTable reads the -json lines of several runs from path and writes a
// markdown table: one row per configuration (system, backend, fetch
// cooldown) in the order first met, one column per figure, each cell the
// median of its runs (with the run count when more than one).
func printTable(path string, w io.Writer) error {
	file, err := os.Open(path)
	if err != nil {
		return err
	}
	defer file.Close()
	figs, err := readFigures(file, path)
	if err != nil {
		return err
	}
	return writeTable(figs, w)
}

// readFigures parses one figure per non-empty line of r; name says where
// a bad line is.
func readFigures(r io.Reader, name string) ([]figure, error) {
	var figs []figure
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		var f figure
		if err := json.Unmarshal([]byte(line), &f); err != nil {
			return nil, fmt.Errorf("%s:%d: not a figure: %w", name, n, err)
		}
		if f.System == "" || f.Scenario == "" {
			return nil, fmt.Errorf("%s:%d: a figure needs system and scenario", name, n)
		}
		figs = append(figs, f)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if len(figs) == 0 {
		return nil, fmt.Errorf("%s: no figures", name)
	}
	return figs, nil
}

// column is one figure of the table.
type column struct {
	scenario    string
	concurrency int // drain only: each concurrency has a column
}

func (c column) title() string {
	switch c.scenario {
	case "drain":
		return fmt.Sprintf("drain C=%d", c.concurrency)
	case "pickup":
		return "idle pickup p50 / p99"
	case "idlecpu":
		return "idle CPU"
	case "cancel":
		return "cancel to ctx done p50 / p99"
	case "enqueue":
		return "enqueue one by one"
	case "enqueue-batch":
		return "enqueue in batches"
	case "enqueue-cpu":
		return "one by one, CPU a task: client / server"
	case "cancel-outcome":
		return "after cancel"
	}
	return c.scenario
}

// order sorts columns: drains by concurrency, then pickup, idle CPU, cancel.
func (c column) order() int {
	switch c.scenario {
	case "drain":
		return c.concurrency
	case "pickup":
		return 1 << 30
	case "idlecpu":
		return 1<<30 + 1
	case "cancel":
		return 1<<30 + 2
	case "cancel-outcome":
		return 1<<30 + 3
	case "enqueue":
		return 1<<30 + 4
	case "enqueue-cpu":
		return 1<<30 + 5
	}
	return 1<<30 + 6
}

// writeTable writes figs as a markdown table.
func writeTable(figs []figure, w io.Writer) error {
	var rows []string
	var cols []column
	cells := map[string]map[column][]figure{}
	for _, f := range figs {
		row := f.label()
		if cells[row] == nil {
			rows = append(rows, row)
			cells[row] = map[column][]figure{}
		}
		c := column{scenario: f.Scenario}
		if f.Scenario == "drain" {
			c.concurrency = f.Concurrency
		}
		if !slices.Contains(cols, c) {
			cols = append(cols, c)
		}
		cells[row][c] = append(cells[row][c], f)
		if f.Scenario == "drain" && f.Concurrency == 50 && f.EnqueuePerSec > 0 {
			// The drain's untimed enqueue is the batch rate (EnqueueBatch,
			// InsertMany), from the concurrency-50 runs.
			b := column{scenario: "enqueue-batch"}
			if !slices.Contains(cols, b) {
				cols = append(cols, b)
			}
			cells[row][b] = append(cells[row][b], f)
		}
		if f.Scenario == "enqueue" && f.ClientCPUUs > 0 {
			e := column{scenario: "enqueue-cpu"}
			if !slices.Contains(cols, e) {
				cols = append(cols, e)
			}
			cells[row][e] = append(cells[row][e], f)
		}
		if f.Scenario == "cancel" && f.CancelFinal+f.CancelRerun > 0 {
			o := column{scenario: "cancel-outcome"}
			if !slices.Contains(cols, o) {
				cols = append(cols, o)
			}
			cells[row][o] = append(cells[row][o], f)
		}
	}
	slices.SortStableFunc(cols, func(a, b column) int { return a.order() - b.order() })
	var b strings.Builder
	b.WriteString("| system |")
	for _, c := range cols {
		b.WriteString(" " + c.title() + " |")
	}
	b.WriteString("\n|---|")
	b.WriteString(strings.Repeat("---|", len(cols)))
	b.WriteString("\n")
	// Rates get their ratio to the first row that has them (the first
	// peer: run.sh puts it first).
	baseRow := map[column]string{}
	for _, row := range rows {
		for _, c := range cols {
			if _, ok := baseRow[c]; !ok && c.isRate() && len(cells[row][c]) > 0 {
				baseRow[c] = row
			}
		}
	}
	ratios := false
	for _, row := range rows {
		b.WriteString("| " + row + " |")
		for _, c := range cols {
			s := cell(c, cells[row][c])
			if br, ok := baseRow[c]; ok && br != row && len(cells[row][c]) > 0 {
				if v := cellValue(c, cells[br][c]); v > 0 {
					s += fmt.Sprintf(" (%.2fx)", cellValue(c, cells[row][c])/v)
					ratios = true
				}
			}
			b.WriteString(" " + s + " |")
		}
		b.WriteString("\n")
	}
	if ratios {
		b.WriteString("\nRates in parentheses: the ratio to the first row that has the figure.\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// isRate reports whether c's cells are rates, which get ratios.
func (c column) isRate() bool {
	switch c.scenario {
	case "drain", "enqueue", "enqueue-batch":
		return true
	}
	return false
}

// cellValue is the median rate of a rate column's runs.
func cellValue(c column, fs []figure) float64 {
	v := make([]float64, len(fs))
	for i, f := range fs {
		if c.scenario == "drain" {
			v[i] = f.TasksPerSec
		} else {
			v[i] = f.EnqueuePerSec
		}
	}
	return median(v)
}

// cell formats the median of one configuration's runs of column c.
func cell(c column, fs []figure) string {
	if len(fs) == 0 {
		return ""
	}
	med := func(get func(figure) float64) float64 {
		v := make([]float64, len(fs))
		for i, f := range fs {
			v[i] = get(f)
		}
		return median(v)
	}
	var s string
	switch c.scenario {
	case "drain":
		s = rate(med(func(f figure) float64 { return f.TasksPerSec }))
	case "pickup", "cancel":
		s = fmt.Sprintf("%s / %s ms", num(med(func(f figure) float64 { return f.P50Ms })),
			num(med(func(f figure) float64 { return f.P99Ms })))
	case "idlecpu":
		s = fmt.Sprintf("%.2f%%", med(func(f figure) float64 { return f.CPUPercent }))
	case "enqueue", "enqueue-batch":
		s = rate(med(func(f figure) float64 { return f.EnqueuePerSec }))
	case "enqueue-cpu":
		s = num(med(func(f figure) float64 { return f.ClientCPUUs })) + " / "
		if srv := med(func(f figure) float64 { return f.ServerCPUUs }); srv > 0 {
			s += num(srv) + " µs"
		} else {
			s += "n/a µs"
		}
	case "cancel-outcome":
		final, rerun := 0, 0
		for _, f := range fs {
			final += f.CancelFinal
			rerun += f.CancelRerun
		}
		switch {
		case rerun == 0:
			s = fmt.Sprintf("final (%d/%d)", final, final)
		case final == 0:
			s = fmt.Sprintf("**runs again** (%d/%d)", rerun, rerun)
		default:
			s = fmt.Sprintf("final %d, runs again %d", final, rerun)
		}
		return s
	}
	if len(fs) > 1 {
		s += fmt.Sprintf(" (median of %d)", len(fs))
	}
	return s
}

// median of v (the mean of the middle two for an even count).
func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// rate formats tasks per second: 512/s, 4.8k/s, 121k/s.
func rate(v float64) string {
	switch {
	case v >= 100000:
		return fmt.Sprintf("%.0fk/s", v/1000)
	case v >= 1000:
		return fmt.Sprintf("%.1fk/s", v/1000)
	}
	return fmt.Sprintf("%.0f/s", v)
}

// num formats milliseconds with three significant digits or so.
func num(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.2f", v)
}
