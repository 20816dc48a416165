package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

// processCPU returns the CPU time the process has used so far, user and
// system together (getrusage RUSAGE_SELF).
func processCPU() (time.Duration, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, fmt.Errorf("getrusage: %w", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}

// serverCPU reads the CPU time a Redis server has used (INFO cpu: user and
// system, its every thread and client together, so the figure is only
// meaningful while nothing else uses the server). On other backends it
// reads zero: their servers do not report it over the connection.
type serverCPU struct{ rdb *redis.Client }

// serverCPUOf returns the serverCPU of the backend at rawURL.
func serverCPUOf(_ context.Context, rawURL string) serverCPU {
	if b, err := backendOf(rawURL); err != nil || b != "redis" {
		return serverCPU{}
	}
	opt, err := redis.ParseURL(rawURL)
	if err != nil {
		return serverCPU{}
	}
	return serverCPU{rdb: redis.NewClient(opt)}
}

// read returns the server's CPU time so far (zero off Redis).
func (s serverCPU) read(ctx context.Context) (time.Duration, error) {
	if s.rdb == nil {
		return 0, nil
	}
	info, err := s.rdb.Info(ctx, "cpu").Result()
	if err != nil {
		return 0, fmt.Errorf("read the server's CPU time (INFO cpu): %w", err)
	}
	return parseServerCPU(info)
}

func (s serverCPU) close() {
	if s.rdb != nil {
		_ = s.rdb.Close()
	}
}

// parseServerCPU adds used_cpu_user and used_cpu_sys (seconds) of an INFO
// cpu reply.
func parseServerCPU(info string) (time.Duration, error) {
	var total float64
	found := 0
	for line := range strings.Lines(info) {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || (k != "used_cpu_user" && k != "used_cpu_sys") {
			continue
		}
		secs, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return 0, fmt.Errorf("INFO cpu: %s %q: %w", k, v, err)
		}
		total += secs
		found++
	}
	if found != 2 {
		return 0, errors.New("INFO cpu: used_cpu_user or used_cpu_sys missing")
	}
	return time.Duration(total * float64(time.Second)), nil
}
