//go:build !failpoints

package main

// failpoint returns nil: only test builds (-tags failpoints) can stop or
// kill themselves inside a refresh.
func failpoint() func(string) { return nil }
