package pgstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// schemaVersion is the version of the tables this program uses.
const schemaVersion = 1

// migrateLock is the advisory lock key that serializes schema changes of
// proxies starting at once ("anaplanp" in ASCII).
const migrateLock int64 = 0x616e61706c616e70

// schemaV1 creates the tables. Versions (of every session row) and fences
// (of every lease) come from sequences, so both only grow, across logout,
// login and a deleted row alike.
const schemaV1 = `
CREATE SEQUENCE IF NOT EXISTS anaplan_proxy_version_seq;
CREATE SEQUENCE IF NOT EXISTS anaplan_proxy_fence_seq;

-- One row per session name. sealed is the AES-GCM sealed session JSON,
-- NULL while logged out. The flight columns mark a refresh in flight: its
-- lease fence and holder, the version its intent write produced, the
-- deadline of its token call, and whether a successor marked its outcome
-- unknown.
CREATE TABLE IF NOT EXISTS anaplan_proxy_session (
	name             text PRIMARY KEY,
	version          bigint NOT NULL,
	sealed           bytea,
	flight_fence     bigint,
	flight_holder    text,
	flight_version   bigint,
	flight_deadline  timestamptz,
	flight_uncertain boolean NOT NULL DEFAULT false,
	updated_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
	CONSTRAINT anaplan_proxy_session_flight CHECK (
		(flight_fence IS NULL) = (flight_version IS NULL) AND
		(flight_fence IS NULL) = (flight_deadline IS NULL) AND
		(flight_fence IS NULL) = (flight_holder IS NULL))
);

-- The refresh lease of each session name. A row is never deleted: a
-- release lets it lapse.
CREATE TABLE IF NOT EXISTS anaplan_proxy_lease (
	name       text PRIMARY KEY,
	fence      bigint NOT NULL,
	holder     text NOT NULL,
	expires_at timestamptz NOT NULL
);

-- One local CA per database, shared by every session name in it: the
-- clients of all the proxies on one database trust a single certificate.
-- Its key is sealed like the sessions.
CREATE TABLE IF NOT EXISTS anaplan_proxy_ca (
	id         int PRIMARY KEY DEFAULT 1 CHECK (id = 1),
	cert_pem   text NOT NULL,
	sealed_key bytea NOT NULL,
	created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
`

// querier is what schema checks need of a connection or pool.
type querier interface {
	Begin(ctx context.Context) (pgx.Tx, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Migrate creates or upgrades the store's tables in the database at dsn.
// It is what `anaplan-proxy store-init` runs, with a role that may create
// tables, for deployments whose proxies run as a role that may not (those
// need SELECT, INSERT and UPDATE on the tables and USAGE on the
// sequences). Running it again does nothing; proxies starting at once wait
// for each other.
func Migrate(ctx context.Context, dsn string) error {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return fmt.Errorf("postgres store: the DSN cannot be used: %w", err)
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("%s: %w", describe(cfg, ""), err)
	}
	defer conn.Close(context.Background())
	return migrate(ctx, conn, nil)
}

// ensureSchema checks that the tables are at schemaVersion, creating or
// upgrading them if not.
func ensureSchema(ctx context.Context, q querier, log *slog.Logger) error {
	v, err := currentSchema(ctx, q)
	if err != nil {
		return err
	}
	switch {
	case v == schemaVersion:
		return nil
	case v > schemaVersion:
		return tooNew(v)
	}
	return migrate(ctx, q, log)
}

func tooNew(v int) error {
	return fmt.Errorf("the store's tables are at schema version %d, newer than this program's %d: upgrade anaplan-proxy", v, schemaVersion)
}

func currentSchema(ctx context.Context, q querier) (int, error) {
	var v *int
	err := q.QueryRow(ctx, `SELECT max(version) FROM anaplan_proxy_schema`).Scan(&v)
	if isUndefinedTable(err) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("reading the schema version: %w", err)
	}
	if v == nil {
		return 0, nil
	}
	return *v, nil
}

func migrate(ctx context.Context, q querier, log *slog.Logger) error {
	tx, err := q.Begin(ctx)
	if err != nil {
		return fmt.Errorf("creating the store's tables: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, migrateLock); err != nil {
		return fmt.Errorf("creating the store's tables: %w", err)
	}
	if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS anaplan_proxy_schema (version int NOT NULL)`); err != nil {
		return migrateError(err)
	}
	v, err := currentSchema(ctx, tx)
	if err != nil {
		return err
	}
	if v > schemaVersion {
		return tooNew(v)
	}
	if v == schemaVersion {
		return nil
	}
	if _, err := tx.Exec(ctx, schemaV1); err != nil {
		return migrateError(err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO anaplan_proxy_schema (version) VALUES ($1)`, schemaVersion); err != nil {
		return migrateError(err)
	}
	if err := tx.Commit(ctx); err != nil {
		return migrateError(err)
	}
	if log != nil {
		log.Info("store_tables_created", "schema_version", schemaVersion)
	}
	return nil
}

func migrateError(err error) error {
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == "42501" {
		return fmt.Errorf("this database role may not create the store's tables (%w): run `anaplan-proxy store-init` once with a role that may, or grant CREATE on the schema", err)
	}
	return fmt.Errorf("creating the store's tables: %w", err)
}
