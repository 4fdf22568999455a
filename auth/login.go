package auth

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/oauth2"
)

// defaultInterval is RFC 8628's polling interval when the server names none.
const defaultInterval = 5 * time.Second

// Login runs the device authorization grant (RFC 8628): it asks for a
// device code, hands it to show (which tells the user where to approve it),
// polls the token endpoint until the user approves, denies, or the code
// expires, and saves the new session to store under its lock.
//
// Polling honours the server's interval and slow_down, and survives
// network errors, 429 and 5xx answers by polling again with the same code.
// A denial returns an error wrapping ErrAccessDenied; an expired code one
// wrapping ErrCodeExpired.
func Login(ctx context.Context, cfg OAuthConfig, store Store, show func(DeviceCode)) (*Session, error) {
	conf := oauth2Config(cfg)
	var slowDowns atomic.Int64
	client := oauthClient(cfg, func(resp *http.Response) {
		if oauthErrorCode(resp) == "slow_down" {
			slowDowns.Add(1)
		}
	})
	hctx := withClient(ctx, client)

	da, err := conf.DeviceAuth(hctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("requesting a device code: %w", ctx.Err())
		}
		return nil, fmt.Errorf("requesting a device code: %w", sanitize("device authorization", err))
	}
	if da.DeviceCode == "" || da.UserCode == "" || da.VerificationURI == "" {
		return nil, errors.New("requesting a device code: the answer lacks device_code, user_code or verification_uri")
	}
	interval := time.Duration(da.Interval) * time.Second
	if interval <= 0 {
		interval = defaultInterval
	}
	if show != nil {
		show(DeviceCode{
			UserCode:                da.UserCode,
			VerificationURI:         da.VerificationURI,
			VerificationURIComplete: da.VerificationURIComplete,
			Expiry:                  da.Expiry,
			Interval:                interval,
		})
	}

	tok, err := pollToken(ctx, hctx, conf, da, interval, &slowDowns)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	s := sessionFromToken(cfg, tok, now)
	s.LoggedInAt = now
	s.RefreshTokenIssuedAt = now

	if _, err := store.Put(ctx, s); err != nil {
		return nil, fmt.Errorf("saving the new session: %w", err)
	}
	return s, nil
}

// pollToken calls DeviceAccessToken until it yields a token or a final
// answer. DeviceAccessToken itself waits out authorization_pending and
// slow_down but gives up on any other error; here a transient error (the
// network, 429, 5xx) just leads to another round with the same code,
// keeping the interval that slow_down answers have raised.
func pollToken(ctx, hctx context.Context, conf *oauth2.Config, da *oauth2.DeviceAuthResponse, interval time.Duration, slowDowns *atomic.Int64) (*oauth2.Token, error) {
	for {
		round := *da
		round.Interval = int64((interval + time.Duration(slowDowns.Load())*defaultInterval) / time.Second)
		tok, err := conf.DeviceAccessToken(hctx, &round)
		if err == nil {
			return tok, nil
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("waiting for the login to be approved: %w", ctx.Err())
		}
		if !da.Expiry.IsZero() && !time.Now().Before(da.Expiry) {
			return nil, fmt.Errorf("waiting for the login to be approved: %w", ErrCodeExpired)
		}
		err = sanitize("token", err)
		var ee *EndpointError
		if errors.As(err, &ee) {
			switch ee.Code {
			case "access_denied":
				return nil, fmt.Errorf("%w (%v)", ErrAccessDenied, err)
			case "expired_token":
				return nil, fmt.Errorf("%w (%v)", ErrCodeExpired, err)
			}
		}
		if !isTransient(err) {
			return nil, fmt.Errorf("waiting for the login to be approved: %w", err)
		}
		// DeviceAccessToken waits one interval before its first poll; wait
		// longer only when the server asked for it.
		if extra := retryHint(err) - interval; extra > 0 {
			if err := sleepContext(ctx, extra); err != nil {
				return nil, fmt.Errorf("waiting for the login to be approved: %w", err)
			}
		}
	}
}

// oauthErrorCode peeks at the RFC 6749 error code of a JSON answer, leaving
// the body readable for its real consumer.
func oauthErrorCode(resp *http.Response) string {
	if resp.Body == nil || resp.StatusCode == http.StatusOK && !strings.Contains(resp.Header.Get("Content-Type"), "json") {
		return ""
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	rest := resp.Body
	resp.Body = struct {
		io.Reader
		io.Closer
	}{io.MultiReader(bytes.NewReader(body), rest), rest}
	if err != nil {
		return ""
	}
	var e struct {
		Error string `json:"error"`
	}
	if json.Unmarshal(body, &e) != nil {
		return ""
	}
	return e.Error
}

func sleepContext(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Logout ends the stored session: under the store's lock it revokes the
// refresh token at cfg.RevokeURL when one is configured (RFC 7009), then
// deletes the stored session. A failed revocation is reported, but the
// local session is deleted all the same. A store refused for its
// permissions is left untouched.
func Logout(ctx context.Context, cfg OAuthConfig, store Store) error {
	var revokeErr error
	rec, err := store.Load(ctx)
	switch {
	case errors.Is(err, ErrNoSession):
		return nil
	case err != nil:
		var se *StoreError
		if !errors.As(err, &se) || se.Fix == "" {
			return fmt.Errorf("logging out: %w", err)
		}
		if cfg.RevokeURL != "" {
			revokeErr = fmt.Errorf("the refresh token was not revoked: %w", err)
		}
	case cfg.RevokeURL != "" && rec.Session.RefreshToken != "":
		if err := revoke(ctx, cfg, rec.Session.RefreshToken); err != nil {
			revokeErr = fmt.Errorf("the local session was deleted, but revoking the refresh token failed: %w", err)
		}
	}
	if _, err := store.Put(ctx, nil); err != nil {
		return errors.Join(revokeErr, fmt.Errorf("logging out: %w", err))
	}
	return revokeErr
}

// revoke asks the RFC 7009 endpoint to revoke a refresh token.
func revoke(ctx context.Context, cfg OAuthConfig, refreshToken string) error {
	form := url.Values{
		"token":           {refreshToken},
		"token_type_hint": {"refresh_token"},
		"client_id":       {cfg.ClientID},
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, cfg.RevokeURL, strings.NewReader(form.Encode()))
	if err != nil {
		return fmt.Errorf("revocation endpoint: %w", err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	resp, err := oauthClient(cfg, nil).Do(req)
	if err != nil {
		return fmt.Errorf("revocation endpoint: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 200 && resp.StatusCode <= 299 {
		io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
		return nil
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	e := &EndpointError{Endpoint: "revocation", StatusCode: resp.StatusCode, Status: resp.Status}
	var oe struct {
		Error       string `json:"error"`
		Description string `json:"error_description"`
	}
	if json.Unmarshal(body, &oe) == nil {
		e.Code = mask(oneLine(oe.Error, 64), []string{refreshToken})
		e.Description = mask(oneLine(oe.Description, 200), []string{refreshToken})
	}
	return e
}
