-- wrk script: every request is a PUT with no body (one hit, +1).
wrk.method = "PUT"
