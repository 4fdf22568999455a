package anaplantest

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	"golang.org/x/oauth2"
)

// TestOAuth2Library runs golang.org/x/oauth2's device flow and refresh
// against the server, the way the auth package uses them.
func TestOAuth2Library(t *testing.T) {
	s := start(t, Options{AutoApprove: true, Interval: time.Second}, nil)
	c := testClient(t, s)
	conf := &oauth2.Config{
		ClientID: s.ClientID(),
		Endpoint: oauth2.Endpoint{
			DeviceAuthURL: s.DeviceAuthURL(),
			TokenURL:      s.TokenURL(),
			AuthStyle:     oauth2.AuthStyleInParams,
		},
		Scopes: []string{"openid", "profile", "email", "offline_access"},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ctx = context.WithValue(ctx, oauth2.HTTPClient, c)

	da, err := conf.DeviceAuth(ctx)
	if err != nil {
		t.Fatalf("DeviceAuth: %v", err)
	}
	if da.Interval != 1 || da.VerificationURIComplete == "" {
		t.Errorf("device answer: interval %d, verification_uri_complete %q", da.Interval, da.VerificationURIComplete)
	}
	tok, err := conf.DeviceAccessToken(ctx, da)
	if err != nil {
		t.Fatalf("DeviceAccessToken: %v", err)
	}
	if tok.RefreshToken == "" || time.Until(tok.Expiry) < 30*time.Minute {
		t.Fatalf("token: refresh token present %t, expiry in %s", tok.RefreshToken != "", time.Until(tok.Expiry))
	}

	expired := *tok
	expired.Expiry = time.Now().Add(-time.Minute)
	next, err := conf.TokenSource(ctx, &expired).Token()
	if err != nil {
		t.Fatalf("refresh: %v", err)
	}
	if next.AccessToken == tok.AccessToken || next.RefreshToken == tok.RefreshToken || next.RefreshToken == "" {
		t.Fatal("refresh through x/oauth2 did not rotate both tokens")
	}

	// A replay surfaces as *oauth2.RetrieveError with invalid_grant.
	_, err = conf.TokenSource(ctx, &expired).Token()
	var rerr *oauth2.RetrieveError
	if !errors.As(err, &rerr) || rerr.ErrorCode != "invalid_grant" || rerr.Response.StatusCode != http.StatusBadRequest {
		t.Fatalf("replayed refresh: err %v, want RetrieveError invalid_grant", err)
	}
	if s.RefreshReplays() != 1 {
		t.Errorf("RefreshReplays() = %d, want 1", s.RefreshReplays())
	}
}
