-- Baselines written for the benchmark: what people build by hand.

-- 1. The common do-it-yourself audit trigger: PL/pgSQL, rows as jsonb.
CREATE TABLE diy_audit (
    id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now(),
    who text NOT NULL DEFAULT current_user, tbl text NOT NULL, op text NOT NULL,
    old_row jsonb, new_row jsonb);
CREATE FUNCTION diy_audit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO diy_audit (tbl, op, old_row, new_row) VALUES (
        TG_TABLE_NAME, TG_OP,
        CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD) END,
        CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) END);
    RETURN NULL;
END $$;

-- 2. The hash chain that blog posts recommend: one head row, locked inside
--    every writing transaction, each event hashed onto it.
CREATE TABLE chain_head (id int PRIMARY KEY, h bytea NOT NULL);
INSERT INTO chain_head VALUES (1, '\x00');
CREATE TABLE chain_audit (
    id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now(),
    who text NOT NULL DEFAULT current_user, tbl text NOT NULL, op text NOT NULL,
    old_row jsonb, new_row jsonb, prev_hash bytea NOT NULL, hash bytea NOT NULL);
CREATE FUNCTION chain_audit() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    prev bytea; o jsonb; n jsonb; new_h bytea;
BEGIN
    SELECT ch.h INTO prev FROM chain_head ch WHERE ch.id = 1 FOR UPDATE;
    o := CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD) END;
    n := CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) END;
    new_h := sha256(prev || convert_to(concat_ws('|', TG_TABLE_NAME, TG_OP, o::text, n::text, now()::text), 'UTF8'));
    INSERT INTO chain_audit (tbl, op, old_row, new_row, prev_hash, hash) VALUES (TG_TABLE_NAME, TG_OP, o, n, prev, new_h);
    UPDATE chain_head SET h = new_h WHERE id = 1;
    RETURN NULL;
END $$;
