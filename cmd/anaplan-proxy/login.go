package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/anaplan-proxy/anaplan-proxy/auth"
	"github.com/anaplan-proxy/anaplan-proxy/auth/pgstore"
	"github.com/anaplan-proxy/anaplan-proxy/internal/config"
)

func cmdLogin(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cf := newCommandFlags("login", "Sign in with the OAuth device flow: open the printed URL in a browser, confirm the code, and the session is stored in the state directory.\n"+
		"With --json, stdout carries one JSON object per line and event (code_issued, approved, denied, expired, error) for runbooks that forward the code.", stderr)
	asJSON := cf.fs.Bool("json", false, "print one JSON object per event instead of the login screen")
	cfg, err := cf.parse(args)
	if err != nil {
		return err
	}
	if err := requireClientID(cfg); err != nil {
		return err
	}
	store, err := openStore(ctx, cfg, nil, nil)
	if err != nil {
		return err
	}
	defer store.close()
	oc, err := oauthConfig(cfg)
	if err != nil {
		return err
	}
	if *asJSON {
		return loginJSON(ctx, oc, store, stdout)
	}
	return login(ctx, oc, store, stdout)
}

// loginFailure adds to a failed login what the user should do next.
func loginFailure(err error) error {
	switch {
	case errors.Is(err, auth.ErrAccessDenied):
		return fmt.Errorf("%w; run `anaplan-proxy login` again and press Confirm in the browser", err)
	case errors.Is(err, auth.ErrCodeExpired):
		return fmt.Errorf("%w; run `anaplan-proxy login` again and approve the code sooner", err)
	default:
		return fmt.Errorf("login failed: %w", err)
	}
}

// loginEvent is one line of `login --json`. Event is code_issued, approved,
// denied, expired or error; the other fields belong to one event each.
type loginEvent struct {
	Event                   string    `json:"event"`
	UserCode                string    `json:"user_code,omitempty"`
	VerificationURI         string    `json:"verification_uri,omitempty"`
	VerificationURIComplete string    `json:"verification_uri_complete,omitempty"`
	ExpiresAt               time.Time `json:"expires_at,omitzero"`
	User                    string    `json:"user,omitempty"`
	AccessTokenExpiry       time.Time `json:"access_token_expiry,omitzero"`
	Error                   string    `json:"error,omitempty"`
}

// loginJSON runs the device flow and writes one loginEvent per line on w,
// so that a runbook can forward the code to a chat channel and wait for
// the outcome. The process exit code is the same as the screen's.
func loginJSON(ctx context.Context, oc auth.OAuthConfig, store auth.Store, w io.Writer) error {
	enc := json.NewEncoder(w)
	sess, err := auth.Login(ctx, oc, store, func(dc auth.DeviceCode) {
		enc.Encode(loginEvent{
			Event:                   "code_issued",
			UserCode:                dc.UserCode,
			VerificationURI:         dc.VerificationURI,
			VerificationURIComplete: dc.VerificationURIComplete,
			ExpiresAt:               dc.Expiry.UTC().Truncate(time.Second),
		})
	})
	if err != nil {
		err = loginFailure(err)
		ev := loginEvent{Event: "error", Error: err.Error()}
		switch {
		case errors.Is(err, auth.ErrAccessDenied):
			ev.Event = "denied"
		case errors.Is(err, auth.ErrCodeExpired):
			ev.Event = "expired"
		}
		enc.Encode(ev)
		return err
	}
	return enc.Encode(loginEvent{
		Event:             "approved",
		User:              identity(sess.IDToken),
		AccessTokenExpiry: sess.Expiry.UTC().Truncate(time.Second),
	})
}

// login runs the device flow and prints the login screen on w.
func login(ctx context.Context, oc auth.OAuthConfig, store auth.Store, w io.Writer) error {
	sess, err := auth.Login(ctx, oc, store, func(dc auth.DeviceCode) { printDeviceCode(w, dc, time.Now()) })
	if err != nil {
		return loginFailure(err)
	}
	who := identity(sess.IDToken)
	if who == "" {
		who = "the Anaplan integration user"
	}
	fmt.Fprintf(w, "\nLogged in as %s.\n", who)
	fmt.Fprintf(w, "Session stored; the access token is valid until %s and is refreshed automatically while `anaplan-proxy serve` runs.\n",
		sess.Expiry.Local().Format(time.RFC1123))
	return nil
}

func printDeviceCode(w io.Writer, dc auth.DeviceCode, now time.Time) {
	url := dc.VerificationURIComplete
	if url == "" {
		url = dc.VerificationURI
	}
	fmt.Fprintf(w, "To connect anaplan-proxy to Anaplan, open this URL in a browser:\n\n    %s\n\n", url)
	fmt.Fprintf(w, "and confirm this code:\n\n    %s\n\n", dc.UserCode)
	if !dc.Expiry.IsZero() {
		fmt.Fprintf(w, "The code expires at %s (in %s).\n", dc.Expiry.Local().Format("15:04:05 MST"), dc.Expiry.Sub(now).Round(time.Second))
	}
	fmt.Fprintf(w, "Sign in as the integration user: it must be an SSO exception user (device login does not support SSO).\n")
	fmt.Fprintf(w, "Waiting for approval...\n")
}

// identity returns the email or name in an ID token's payload, for display
// only: the token is not verified and nothing else is taken from it.
func identity(idToken string) string {
	parts := strings.Split(idToken, ".")
	if len(parts) < 2 {
		return ""
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return ""
	}
	var claims struct {
		Email string `json:"email"`
		Name  string `json:"name"`
	}
	if json.Unmarshal(payload, &claims) != nil {
		return ""
	}
	if claims.Email != "" {
		return claims.Email
	}
	return claims.Name
}

func cmdLogout(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cf := newCommandFlags("logout", "Revoke the refresh token (when oauth.revocation_url is set) and delete the stored session. A running serve stops injecting tokens.", stderr)
	cfg, err := cf.parse(args)
	if err != nil {
		return err
	}
	store, err := openStore(ctx, cfg, nil, nil)
	if err != nil {
		return err
	}
	defer store.close()
	oc, err := oauthConfig(cfg)
	if err != nil {
		return err
	}
	if err := auth.Logout(ctx, oc, store); err != nil {
		return err
	}
	fmt.Fprintln(stdout, "Logged out: the stored session is deleted.")
	return nil
}

func cmdStoreInit(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cf := newCommandFlags("store-init", "Create or upgrade the tables of the PostgreSQL session store named by store.postgres_dsn.\n"+
		"serve creates them itself when its database role may; run this as a role that may, then grant the daemon's role\n"+
		"SELECT, INSERT, UPDATE on the tables and USAGE on the sequences (see the README).", stderr)
	cfg, err := cf.parse(args)
	if err != nil {
		return err
	}
	if cfg.Store.Type != config.StorePostgres {
		return usageError{fmt.Errorf("store.type is %q: only a postgres store has tables to create", cfg.Store.Type)}
	}
	if err := pgstore.Migrate(ctx, cfg.Store.PostgresDSN.Value()); err != nil {
		return fmt.Errorf("store.postgres_dsn (%s): %w", cfg.Store.PostgresDSN, err)
	}
	fmt.Fprintf(stdout, "The session store's tables are ready in %s.\n", cfg.Store.PostgresDSN)
	return nil
}
