-- The memory context: memories, documents and their chunks, extraction logs.
--
-- Vectors are stored untyped (`vector`, any dimensions) beside the model that
-- made them: a model change re-embeds rows one by one without mixing models.
-- The HNSW index is per model (a partial index on `embedding::vector(N)`), so
-- the service creates it at start for its configured model (see vectors.rs).

CREATE FUNCTION set_update_time() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.update_time := now();
    RETURN NEW;
END
$$;

CREATE TABLE memories (
    id                uuid PRIMARY KEY,
    user_id           uuid NOT NULL,
    -- NULL: the user's everywhere.
    project_id        uuid,
    kind              text NOT NULL CHECK (kind IN (
        'fact', 'preference', 'event', 'goal', 'relationship', 'emotion', 'situation',
        'routine', 'struggle', 'thread', 'follow_up', 'pattern', 'context', 'conversation')),
    category          text,
    key               text,
    content           text NOT NULL CHECK (char_length(content) BETWEEN 1 AND 8000),
    importance        real NOT NULL DEFAULT 0.5 CHECK (importance BETWEEN 0 AND 1),
    emotional_valence real NOT NULL DEFAULT 0 CHECK (emotional_valence BETWEEN -2 AND 2),
    tags              text[] NOT NULL DEFAULT '{}',
    -- [{"name": "...", "type": "person" | "company" | "concept"}]
    entities          jsonb NOT NULL DEFAULT '[]',
    source_type       text NOT NULL DEFAULT 'manual' CHECK (source_type IN (
        'message', 'conversation', 'document', 'manual', 'import')),
    source_ref        text NOT NULL DEFAULT '',
    metadata          jsonb NOT NULL DEFAULT '{}',
    expire_time       timestamptz,
    delete_time       timestamptz,
    previous_content  text,
    revision          integer NOT NULL DEFAULT 0,
    embedding         vector,
    embedding_model   text,
    search_tsv        tsvector GENERATED ALWAYS AS (to_tsvector('english', content)) STORED,
    create_time       timestamptz NOT NULL DEFAULT now(),
    update_time       timestamptz NOT NULL DEFAULT now(),
    last_access_time  timestamptz,
    access_count      bigint NOT NULL DEFAULT 0,
    CONSTRAINT memories_key_pair CHECK ((category IS NULL) = (key IS NULL)),
    CONSTRAINT memories_embedding_model CHECK ((embedding IS NULL) = (embedding_model IS NULL))
);
CREATE TRIGGER memories_update_time BEFORE UPDATE OF content, kind, importance, emotional_valence,
    tags, entities, source_type, source_ref, metadata, expire_time, delete_time, project_id
    ON memories FOR EACH ROW EXECUTE FUNCTION set_update_time();

-- A keyed memory is unique per user, project (NULL counting as one project) and
-- category + key, among the live ones: a deleted one may be stated anew.
CREATE UNIQUE INDEX memories_keyed ON memories (user_id, project_id, category, key)
    NULLS NOT DISTINCT WHERE category IS NOT NULL AND delete_time IS NULL;
-- Listing and exact search: a user's live memories, newest first (ids are
-- UUIDv7, so their order is their creation order).
CREATE INDEX memories_user ON memories (user_id, id DESC) WHERE delete_time IS NULL;
CREATE INDEX memories_tsv ON memories USING gin (search_tsv);
CREATE INDEX memories_trgm ON memories USING gin (content gin_trgm_ops);
-- The re-embedding job's work list: rows whose vector is missing or of another model.
CREATE INDEX memories_model ON memories (embedding_model);

CREATE TABLE documents (
    id            uuid PRIMARY KEY,
    user_id       uuid NOT NULL,
    project_id    uuid,
    filename      text NOT NULL CHECK (char_length(filename) BETWEEN 1 AND 255),
    type          text NOT NULL CHECK (type IN ('txt', 'md')),
    metadata      jsonb NOT NULL DEFAULT '{}',
    content       text NOT NULL,
    size_bytes    bigint NOT NULL,
    status        text NOT NULL DEFAULT 'pending'
                  CHECK (status IN ('pending', 'processing', 'completed', 'failed')),
    error         text,
    page_count    integer NOT NULL DEFAULT 0,
    word_count    integer NOT NULL DEFAULT 0,
    chunk_count   integer NOT NULL DEFAULT 0,
    chunks_done   integer NOT NULL DEFAULT 0,
    -- Ingestion claims: who holds the document and until when (a replica that
    -- dies leaves the lease to expire, and another one resumes the work).
    attempts      integer NOT NULL DEFAULT 0,
    lease_owner   uuid,
    lease_until   timestamptz,
    create_time   timestamptz NOT NULL DEFAULT now(),
    update_time   timestamptz NOT NULL DEFAULT now(),
    complete_time timestamptz,
    CONSTRAINT documents_error CHECK ((status = 'failed') = (error IS NOT NULL))
);
CREATE TRIGGER documents_update_time BEFORE UPDATE ON documents
    FOR EACH ROW EXECUTE FUNCTION set_update_time();
-- Listing: a user's documents, newest first (ids are time-ordered v7, and
-- the page token is the last id).
CREATE INDEX documents_user ON documents (user_id, id DESC);
-- The ingestion worker's queue: what waits, oldest first.
CREATE INDEX documents_unfinished ON documents (create_time, id) WHERE status IN ('pending', 'processing');

CREATE TABLE chunks (
    id              uuid PRIMARY KEY,
    document_id     uuid NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    -- Copied from the document, so a search filters chunks without a join.
    user_id         uuid NOT NULL,
    chunk_index     integer NOT NULL CHECK (chunk_index >= 0),
    content         text NOT NULL,
    page            integer NOT NULL,
    section_title   text NOT NULL DEFAULT '',
    token_count     integer NOT NULL,
    embedding       vector,
    embedding_model text,
    search_tsv      tsvector GENERATED ALWAYS AS (to_tsvector('english', content)) STORED,
    create_time     timestamptz NOT NULL DEFAULT now(),
    -- A resumed ingestion never stores a chunk twice.
    CONSTRAINT chunks_position UNIQUE (document_id, chunk_index),
    CONSTRAINT chunks_embedding_model CHECK ((embedding IS NULL) = (embedding_model IS NULL))
);
CREATE INDEX chunks_user ON chunks (user_id);
CREATE INDEX chunks_tsv ON chunks USING gin (search_tsv);
CREATE INDEX chunks_model ON chunks (embedding_model);

CREATE TABLE extractions (
    id              uuid PRIMARY KEY,
    user_id         uuid NOT NULL,
    conversation_id uuid,
    type            text NOT NULL CHECK (type IN ('context', 'thread')),
    status          text NOT NULL CHECK (status IN ('succeeded', 'failed', 'skipped')),
    items_extracted integer NOT NULL DEFAULT 0 CHECK (items_extracted >= 0),
    duration_ms     bigint NOT NULL DEFAULT 0 CHECK (duration_ms >= 0),
    error           text,
    create_time     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT extractions_error CHECK ((status = 'failed') = (error IS NOT NULL))
);
CREATE INDEX extractions_user ON extractions (user_id, id DESC);

-- Answers of retryable RPCs by request_id (see mesh_runtime::idempotency).
CREATE TABLE idempotency_keys (
    operation   text NOT NULL,
    request_id  text NOT NULL,
    request     bytea NOT NULL,
    response    bytea,
    user_id     uuid,
    create_time timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (operation, request_id)
);
CREATE INDEX idempotency_keys_user ON idempotency_keys (user_id) WHERE user_id IS NOT NULL;
CREATE INDEX idempotency_keys_age ON idempotency_keys (create_time);
