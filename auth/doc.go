// Package auth holds one OAuth 2.0 device-flow session (RFC 8628) for an
// Anaplan integration user, shared by every process that uses the same
// store: the login, the store, and a Manager that refreshes the access
// token before it expires. Across all those processes, one refresh runs at
// a time, every rotated refresh token is stored before the new access
// token is used, and a refresh token that may already have been sent is
// never sent again (an RFC 9700 server would revoke the grant).
//
// The package knows nothing about proxying: a caller asks the Manager for
// the current access token and reports tokens that an API rejected.
//
// Where things are:
//
//   - session.go: Session (what is stored), Record (a version of it, with
//     any in-flight mark), Lease, and the Store interface, whose doc
//     comment states the refresh protocol: lease, load, intent write,
//     token call, result write.
//   - store.go: FileStore, the session in one 0600 JSON file; its lease is
//     flock(2), which cannot lapse while the process lives.
//   - pgstore/: the PostgreSQL store for several hosts: a lease with a
//     fencing number, writes the database checks, tokens sealed at rest.
//   - refresher.go: the I/O of one refresh cycle (store and token
//     endpoint), returning an outcome. It never decides what is served.
//   - manager.go: the state (valid, refreshing, degraded, login_required,
//     logged_out), the one published token snapshot, the Run loop that
//     schedules refreshes, adopts what other processes write and retries
//     a result write that failed.
//   - login.go: the device flow and logout; oauth.go: the token endpoint
//     client (JSON bodies for Anaplan) and its errors, never quoting a
//     token.
//
// The Run goroutine owns the refresher and the lease; Manager.mu guards
// what AccessToken, Rejected and Status read.
package auth
