//go:build failpoints

package main

import (
	"os"
	"runtime"
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
			// Sent to this thread, the signal stops it before it runs on;
			// sent to the process it goes to the main thread, and this one
			// runs on past the point until that thread has been scheduled.
			runtime.LockOSThread()
			syscall.Tgkill(os.Getpid(), syscall.Gettid(), syscall.SIGSTOP)
			runtime.UnlockOSThread()
		case "exit":
			os.Exit(137)
		}
	}
}
