-- S4 upload: POST a 1 MiB body on keep-alive connections; the backend reads
-- it whole before answering 200.
wrk.method = "POST"
wrk.body = string.rep("x", 1048576)
wrk.headers["Content-Type"] = "application/octet-stream"
