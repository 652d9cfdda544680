-- Retention and downsampling walk the history by time, across counters.
CREATE INDEX history_taken_at ON history (taken_at);
