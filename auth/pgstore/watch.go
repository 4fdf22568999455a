package pgstore

import (
	"context"
	"errors"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// Watch reconnection backoff, and how long a quiet connection may go
// unchecked (a silent network partition sends no error).
const (
	watchBackoffMin = 100 * time.Millisecond
	watchBackoffMax = 5 * time.Second
	watchIdleCheck  = 30 * time.Second
)

// Watch returns a channel that receives a value soon after another
// process writes this session's record, and also each time the watch has
// (re)connected: notifications sent while it was not listening are lost,
// so the caller reloads then. It listens on a connection of its own,
// reconnecting with backoff while the database is unreachable. When ctx is
// done it closes its connection and then the channel.
func (s *Store) Watch(ctx context.Context) <-chan struct{} {
	ch := make(chan struct{}, 1)
	go s.watch(ctx, ch)
	return ch
}

// signal wakes the watcher's reader without blocking: one pending value
// stands for any number of changes.
func signal(ch chan<- struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

func (s *Store) watch(ctx context.Context, ch chan<- struct{}) {
	defer close(ch)
	backoff := watchBackoffMin
	attempts := 0
	down := false
	for ctx.Err() == nil {
		start := time.Now()
		conn, err := s.listen(ctx)
		attempts++
		if attempts > 1 || err != nil {
			s.done("watch_reconnect", start, err)
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if !down {
				s.log.Warn("store_watch_disconnected", "store", s.desc, "error", err.Error())
				down = true
			}
			// Full jitter keeps the proxies of one database from
			// reconnecting in step after an outage.
			d := time.Duration(rand.Int64N(int64(backoff))) + backoff/2
			backoff = min(2*backoff, watchBackoffMax)
			t := time.NewTimer(d)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			continue
		}
		if down {
			s.log.Info("store_watch_reconnected", "store", s.desc)
			down = false
		}
		backoff = watchBackoffMin
		signal(ch)
		err = s.receive(ctx, conn, ch)
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		conn.Close(cctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		s.log.Warn("store_watch_disconnected", "store", s.desc, "error", err.Error())
		down = true
	}
}

// listen opens the watch's connection and subscribes to the channel.
func (s *Store) listen(ctx context.Context) (*pgx.Conn, error) {
	ctx, cancel := s.opContext(ctx)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, s.pool.Config().ConnConfig.Copy())
	if err != nil {
		return nil, err
	}
	if _, err := conn.Exec(ctx, "LISTEN "+notifyChannel); err != nil {
		conn.Close(context.WithoutCancel(ctx))
		return nil, err
	}
	return conn, nil
}

// receive passes on the notifications for this session name until the
// connection fails or ctx is done. A connection quiet for watchIdleCheck
// is pinged, so that a silent partition is noticed.
func (s *Store) receive(ctx context.Context, conn *pgx.Conn, ch chan<- struct{}) error {
	for {
		wctx, cancel := context.WithTimeout(ctx, watchIdleCheck)
		n, err := conn.WaitForNotification(wctx)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if !errors.Is(err, context.DeadlineExceeded) || conn.IsClosed() {
				return err
			}
			pctx, cancel := s.opContext(ctx)
			err = conn.Ping(pctx)
			cancel()
			if err != nil {
				return err
			}
			continue
		}
		if _, name, ok := strings.Cut(n.Payload, " "); ok && name == s.name {
			signal(ch)
		}
	}
}
