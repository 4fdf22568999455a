//go:build failpoints

package main

import (
	"os"
	"strings"
	"sync"
	"syscall"
)

// failpoint returns the refresh failpoint hook of a test build: the
// variable ANAPLAN_PROXY_FAILPOINTS lists point=action pairs (comma
// separated), where action is "stop" (the process sends itself SIGSTOP, as
// a VM freeze or a long GC pause would) or "exit" (the process dies on the
// spot, as on SIGKILL). Each point acts once. Release builds have no hook.
func failpoint() func(string) {
	spec := os.Getenv("ANAPLAN_PROXY_FAILPOINTS")
	if spec == "" {
		return nil
	}
	actions := map[string]string{}
	for _, kv := range strings.Split(spec, ",") {
		if k, v, ok := strings.Cut(strings.TrimSpace(kv), "="); ok {
			actions[k] = v
		}
	}
	var mu sync.Mutex
	return func(point string) {
		mu.Lock()
		action := actions[point]
		delete(actions, point)
		mu.Unlock()
		switch action {
		case "stop":
			syscall.Kill(os.Getpid(), syscall.SIGSTOP)
		case "exit":
			os.Exit(137)
		}
	}
}
