-- wrk script: CORS preflights, answered by the Worker itself without a Durable Object:
-- the ceiling of wrangler dev's per-request overhead, for reading P5 and P6.
wrk.method = "OPTIONS"
