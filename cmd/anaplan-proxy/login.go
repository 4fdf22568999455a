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
)

func cmdLogin(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cf := newCommandFlags("login", "Sign in with the OAuth device flow: open the printed URL in a browser, confirm the code, and the session is stored in the state directory.", stderr)
	cfg, err := cf.parse(args)
	if err != nil {
		return err
	}
	if err := requireClientID(cfg); err != nil {
		return err
	}
	store, err := openStore(cfg)
	if err != nil {
		return err
	}
	oc, err := oauthConfig(cfg)
	if err != nil {
		return err
	}
	return login(ctx, oc, store, stdout)
}

// login runs the device flow and prints the login screen on w.
func login(ctx context.Context, oc auth.OAuthConfig, store auth.Store, w io.Writer) error {
	sess, err := auth.Login(ctx, oc, store, func(dc auth.DeviceCode) { printDeviceCode(w, dc, time.Now()) })
	switch {
	case errors.Is(err, auth.ErrAccessDenied):
		return fmt.Errorf("%w; run `anaplan-proxy login` again and press Confirm in the browser", err)
	case errors.Is(err, auth.ErrCodeExpired):
		return fmt.Errorf("%w; run `anaplan-proxy login` again and approve the code sooner", err)
	case err != nil:
		return fmt.Errorf("login failed: %w", err)
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
	store, err := openStore(cfg)
	if err != nil {
		return err
	}
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
