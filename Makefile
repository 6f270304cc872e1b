# flowgate - build, test, run, install.
#
#   make          build/flowgate (-O2, warnings are errors)
#   make run      install missing packages, build, dev certs, demo upstream, run
#                 flowgate on 127.0.0.1; HTTPS_PORT=8443 HTTP_PORT=8080 ADMIN_PORT=9901
#                 UPSTREAM_PORT=9001 REDIS_PORT=6379 choose its ports
#   make test     install missing packages, unit + fuzz-corpus + integration tests
#   make bench    install missing packages, flowgate beside nginx and HAProxy
#   make deps     the packages of all three (deps-run, deps-test, deps-bench: one)
#   make install  the binary, the systemd unit and an example configuration
#   make uninstall  the same files, never flowgate.conf
#   make fuzz     run each libFuzzer target for FUZZ_SECONDS
#
# make install writes, each path prefixed by $(DESTDIR) (empty by default; a
# staging root for packages, e.g. DESTDIR=/tmp/stage):
#   $(PREFIX)/bin/flowgate                           PREFIX=/usr/local by default
#   $(UNITDIR)/flowgate.service                      UNITDIR=$(PREFIX)/lib/systemd/system
#   $(SYSCONFDIR)/flowgate/flowgate.conf.example     SYSCONFDIR=/etc by default
# The unit's paths (@PREFIX@, @SYSCONFDIR@ in systemd/flowgate.service.in) and
# the example's /etc/flowgate are written for these values. systemd looks for
# units of locally installed software in /usr/local/lib/systemd/system and of
# distribution packages in /usr/lib/systemd/system, which the default UNITDIR
# gives for PREFIX=/usr/local and PREFIX=/usr; with any other PREFIX set
# UNITDIR=/etc/systemd/system (the administrator's own units). The example
# is conf/flowgate.prod.conf; flowgate.conf itself is never written, so an
# existing one is never replaced.

PREFIX      ?= /usr/local
SYSCONFDIR  ?= /etc
UNITDIR     ?= $(PREFIX)/lib/systemd/system
CC          ?= cc
FUZZ_CC     ?= clang-14
FUZZ_SECONDS ?= 60

# llhttp (Debian's node-llhttp) is not part of flowgate: it is the oracle of
# the differential fuzz target fuzz_h1_llhttp, compiled in its strict mode.
LLHTTP_DIR  := /usr/share/llhttp
LLHTTP_INC  := /usr/share/include/llhttp
PKGS        := libevent libevent_openssl openssl libjwt hiredis jansson libconfig libnghttp2

PKG_CFLAGS  = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS    = $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lpthread -lm

VERSION     := 0.1.0
# The source revision `flowgate -V` prints: `git describe` of this checkout,
# "unknown" outside one (an unpacked release); REVISION=... overrides it. No
# date or time goes into the binary: two builds of one revision are the same.
REVISION    ?= $(shell test -e .git && git describe --always --dirty 2>/dev/null || echo unknown)
REVISION    := $(REVISION)
WARN        := -Wall -Wextra -Werror -Wshadow -Wno-unused-parameter
CFLAGS      ?= -O2 -g
BASE_CFLAGS := -std=gnu11 $(WARN) -D_GNU_SOURCE -DFG_VERSION=\"$(VERSION)\" -Igateway -Ibuild/gen
SAN_FLAGS   := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined

SRCS        := $(wildcard gateway/*.c)
LIB_SRCS    := $(filter-out gateway/main.c,$(SRCS))
LLHTTP_SRCS := $(LLHTTP_DIR)/llhttp.c $(LLHTTP_DIR)/api.c $(LLHTTP_DIR)/http.c

OBJS        := $(SRCS:gateway/%.c=build/obj/%.o)
ASAN_OBJS   := $(SRCS:gateway/%.c=build/asan/%.o)
ASAN_LIB    := $(LIB_SRCS:gateway/%.c=build/asan/%.o)

UNIT_SRCS   := $(wildcard tests/unit/test_*.c)
UNIT_BINS   := $(UNIT_SRCS:tests/unit/%.c=build/tests/%)
FUZZ_SRCS   := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_BINS   := $(FUZZ_SRCS:tests/fuzz/%.c=build/fuzz/%)

.PHONY: all deps deps-run deps-test deps-bench run test unit fuzz-replay fuzz integration \
	install uninstall clean certs asan format bench bench-jwt

all: build/flowgate

# Debian packages: each target installs what it needs, no more (tools/deps.sh).
deps:
	@sh tools/deps.sh run test bench

deps-run:
	@sh tools/deps.sh run

deps-test:
	@sh tools/deps.sh test

deps-bench:
	@sh tools/deps.sh bench

# Debian 12's libnghttp2 carries the Rapid Reset (CVE-2023-44487) and
# CONTINUATION flood (CVE-2024-28182) fixes as backports while it still
# reports version 1.52.0: the build looks for the two functions it needs,
# never at the version, and stops with a clear message when one is missing.
NGHTTP2_NEEDS := nghttp2_option_set_stream_reset_rate_limit nghttp2_option_set_max_continuations
build/gen/nghttp2-ok: | build/gen
	@printf '#include <nghttp2/nghttp2.h>\nint main(void) { nghttp2_option *o;\n  if (nghttp2_option_new(&o)) return 1;\n  nghttp2_option_set_stream_reset_rate_limit(o, 1, 1);\n  nghttp2_option_set_max_continuations(o, 1);\n  nghttp2_option_del(o); return 0; }\n' > build/gen/nghttp2-check.c
	@$(CC) -o build/gen/nghttp2-check build/gen/nghttp2-check.c \
	    $$(pkg-config --cflags --libs libnghttp2) 2>build/gen/nghttp2-check.log || { \
	    echo "libnghttp2 lacks $(NGHTTP2_NEEDS) (the Rapid Reset and CONTINUATION" \
	         "flood fixes); install a libnghttp2 that has them (Debian 12: libnghttp2-dev" \
	         "1.52.0-1+deb12u1 or later). See build/gen/nghttp2-check.log" >&2; exit 1; }
	@touch $@

build/obj/%.o: gateway/%.c gateway/*.h | build/obj build/gen/nghttp2-ok
	$(CC) $(BASE_CFLAGS) $(CFLAGS) $(PKG_CFLAGS) -c -o $@ $<

build/flowgate: $(OBJS)
	$(CC) $(CFLAGS) -o $@ $^ $(PKG_LIBS)

build/asan/%.o: gateway/%.c gateway/*.h | build/asan build/gen/nghttp2-ok
	$(CC) $(BASE_CFLAGS) $(SAN_FLAGS) $(PKG_CFLAGS) -c -o $@ $<

build/asan/flowgate: $(ASAN_OBJS)
	$(CC) $(SAN_FLAGS) -o $@ $^ $(PKG_LIBS)

# Only main.c (-V, the start line) and admin.c (flowgate_build_info) name the
# revision; build/revision changes when it does, so a
# new commit rebuilds those two objects and nothing else.
$(shell mkdir -p build && echo '$(REVISION)' | cmp -s - build/revision || \
    echo '$(REVISION)' > build/revision)
build/obj/main.o build/asan/main.o build/obj/admin.o build/asan/admin.o: build/revision
build/obj/main.o build/asan/main.o build/obj/admin.o build/asan/admin.o: \
    BASE_CFLAGS += -DFG_REVISION=\"$(REVISION)\"

asan: build/asan/flowgate

build/tests/test_%: tests/unit/test_%.c $(ASAN_LIB) | build/tests
	$(CC) $(BASE_CFLAGS) $(SAN_FLAGS) $(PKG_CFLAGS) -o $@ $^ $(PKG_LIBS) -lcmocka

# The gateway sources are compiled for the fuzzers once (coverage
# instrumentation without libFuzzer's main), then linked into every target.
FUZZ_FLAGS  := -Wno-unknown-warning-option -g -O1
FUZZ_OBJS   := $(LIB_SRCS:gateway/%.c=build/fuzzobj/%.o)
FUZZ_LLHTTP := $(LLHTTP_SRCS:$(LLHTTP_DIR)/%.c=build/fuzzobj/llhttp_%.o)

build/fuzzobj/%.o: gateway/%.c gateway/*.h | build/fuzzobj build/gen/nghttp2-ok
	$(FUZZ_CC) $(BASE_CFLAGS) $(FUZZ_FLAGS) -fsanitize=fuzzer-no-link,address,undefined \
	    $(PKG_CFLAGS) -c -o $@ $<

# Third-party sources from Debian's node-llhttp, compiled in place, never copied.
build/fuzzobj/llhttp_%.o: $(LLHTTP_DIR)/%.c | build/fuzzobj
	$(FUZZ_CC) $(FUZZ_FLAGS) -w -DLLHTTP_STRICT_MODE=1 -I$(LLHTTP_INC) \
	    -fsanitize=fuzzer-no-link,address,undefined -c -o $@ $<

build/fuzz/fuzz_%: tests/fuzz/fuzz_%.c $(FUZZ_OBJS) gateway/*.h | build/fuzz
	$(FUZZ_CC) $(BASE_CFLAGS) $(FUZZ_FLAGS) -fsanitize=fuzzer,address,undefined \
	    $(PKG_CFLAGS) -o $@ $< $(FUZZ_OBJS) $(PKG_LIBS)

build/fuzz/fuzz_h1_llhttp: tests/fuzz/fuzz_h1_llhttp.c $(FUZZ_OBJS) $(FUZZ_LLHTTP) gateway/*.h | build/fuzz
	$(FUZZ_CC) $(BASE_CFLAGS) -I$(LLHTTP_INC) $(FUZZ_FLAGS) -fsanitize=fuzzer,address,undefined \
	    $(PKG_CFLAGS) -o $@ $< $(FUZZ_OBJS) $(FUZZ_LLHTTP) $(PKG_LIBS)

# The status page is edited as HTML and compiled in as one C string literal.
build/gen/status_page.h: gateway/status_page.html | build/gen
	sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/^/"/' -e 's/$$/\\n"/' $< > $@

build/obj/status.o build/asan/status.o build/fuzzobj/status.o: build/gen/status_page.h

build/obj build/asan build/tests build/fuzz build/fuzzobj build/gen:
	@mkdir -p $@

certs: certs/dev/server.crt

certs/dev/server.crt: certs/gen-dev-certs.sh
	sh certs/gen-dev-certs.sh certs/dev

unit: $(UNIT_BINS)
	@sh tests/run-unit.sh $(UNIT_BINS)

fuzz-replay: $(FUZZ_BINS)
	@sh tests/fuzz/replay.sh $(FUZZ_BINS)

fuzz: $(FUZZ_BINS)
	@for f in $(FUZZ_BINS); do n=$${f##*/}; mkdir -p build/corpus/$$n; \
	    $$f -max_total_time=$(FUZZ_SECONDS) build/corpus/$$n tests/fuzz/corpus/$$n || exit 1; done

integration: build/asan/flowgate build/flowgate certs
	@python3 tests/integration/run.py --binary build/asan/flowgate

test: deps-test
	@$(MAKE) --no-print-directory -j$$(nproc) build/flowgate build/asan/flowgate $(UNIT_BINS) $(FUZZ_BINS) certs
	@sh tests/run-all.sh

# make run's ports, all on 127.0.0.1: make run HTTPS_PORT=9443 HTTP_PORT=9080 ...
HTTPS_PORT    ?= 8443
HTTP_PORT     ?= 8080
ADMIN_PORT    ?= 9901
UPSTREAM_PORT ?= 9001
REDIS_PORT    ?= 6379

run: deps-run
	@$(MAKE) --no-print-directory build/flowgate certs
	@HTTPS_PORT=$(HTTPS_PORT) HTTP_PORT=$(HTTP_PORT) ADMIN_PORT=$(ADMIN_PORT) \
	    UPSTREAM_PORT=$(UPSTREAM_PORT) REDIS_PORT=$(REDIS_PORT) sh tools/run-dev.sh

bench: deps-bench
	@$(MAKE) --no-print-directory build/flowgate certs
	@sh bench/run

# CPU per token verification, uncached and cached (bench/jwt_bench.c).
bench-jwt: build/bench/jwt_bench

build/bench/jwt_bench: bench/jwt_bench.c $(filter-out build/obj/main.o,$(OBJS))
	@mkdir -p build/bench
	$(CC) $(BASE_CFLAGS) $(CFLAGS) $(PKG_CFLAGS) -o $@ $^ $(PKG_LIBS)

# The unit and the example are rewritten for the paths chosen above, then
# installed: a unit that names another binary than the one installed would
# start something else, or nothing.
install: build/flowgate
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSCONFDIR)/flowgate
	install -m 0755 build/flowgate $(DESTDIR)$(PREFIX)/bin/flowgate
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@SYSCONFDIR@|$(SYSCONFDIR)|g' \
	    systemd/flowgate.service.in > $(DESTDIR)$(UNITDIR)/flowgate.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/flowgate.service
	sed -e 's|/etc/flowgate/|$(SYSCONFDIR)/flowgate/|g' conf/flowgate.prod.conf \
	    > $(DESTDIR)$(SYSCONFDIR)/flowgate/flowgate.conf.example
	chmod 0644 $(DESTDIR)$(SYSCONFDIR)/flowgate/flowgate.conf.example

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/flowgate $(DESTDIR)$(UNITDIR)/flowgate.service \
	    $(DESTDIR)$(SYSCONFDIR)/flowgate/flowgate.conf.example

format:
	clang-format -i gateway/*.c gateway/*.h tests/unit/*.c tests/fuzz/*.c

clean:
	rm -rf build
