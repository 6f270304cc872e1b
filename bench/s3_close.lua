-- S3: one request per connection, so every request costs a full TLS handshake
-- (the servers refuse session resumption; see bench/run).
wrk.headers["Connection"] = "close"
