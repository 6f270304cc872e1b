# flowgate - build, test, run, install.
#
#   make          build/flowgate (-O2, warnings are errors)
#   make run      install missing packages, build, dev certs, demo upstream, run
#   make test     install missing packages, unit + fuzz-corpus + integration tests
#   make install  /usr/local/bin/flowgate (PREFIX=...), config example, systemd unit
#   make fuzz     run each libFuzzer target for FUZZ_SECONDS

PREFIX      ?= /usr/local
SYSCONFDIR  ?= /etc
CC          ?= cc
FUZZ_CC     ?= clang-14
FUZZ_SECONDS ?= 60

# llhttp (Debian's node-llhttp) is not part of flowgate: it is the oracle of
# the differential fuzz target fuzz_h1_llhttp, compiled in its strict mode.
LLHTTP_DIR  := /usr/share/llhttp
LLHTTP_INC  := /usr/share/include/llhttp
PKGS        := libevent libevent_openssl openssl libjwt hiredis jansson libconfig

PKG_CFLAGS  = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS    = $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lpthread -lm

VERSION     := 0.1.0
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

.PHONY: all deps run test unit fuzz-replay fuzz integration install clean certs asan format bench \
	bench-jwt

all: build/flowgate

deps:
	@sh tools/deps.sh

build/obj/%.o: gateway/%.c gateway/*.h | build/obj
	$(CC) $(BASE_CFLAGS) $(CFLAGS) $(PKG_CFLAGS) -c -o $@ $<

build/flowgate: $(OBJS)
	$(CC) $(CFLAGS) -o $@ $^ $(PKG_LIBS)

build/asan/%.o: gateway/%.c gateway/*.h | build/asan
	$(CC) $(BASE_CFLAGS) $(SAN_FLAGS) $(PKG_CFLAGS) -c -o $@ $<

build/asan/flowgate: $(ASAN_OBJS)
	$(CC) $(SAN_FLAGS) -o $@ $^ $(PKG_LIBS)

asan: build/asan/flowgate

build/tests/test_%: tests/unit/test_%.c $(ASAN_LIB) | build/tests
	$(CC) $(BASE_CFLAGS) $(SAN_FLAGS) $(PKG_CFLAGS) -o $@ $^ $(PKG_LIBS) -lcmocka

# The gateway sources are compiled for the fuzzers once (coverage
# instrumentation without libFuzzer's main), then linked into every target.
FUZZ_FLAGS  := -Wno-unknown-warning-option -g -O1
FUZZ_OBJS   := $(LIB_SRCS:gateway/%.c=build/fuzzobj/%.o)
FUZZ_LLHTTP := $(LLHTTP_SRCS:$(LLHTTP_DIR)/%.c=build/fuzzobj/llhttp_%.o)

build/fuzzobj/%.o: gateway/%.c gateway/*.h | build/fuzzobj
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

test: deps
	@$(MAKE) --no-print-directory -j$$(nproc) build/flowgate build/asan/flowgate $(UNIT_BINS) $(FUZZ_BINS) certs
	@sh tests/run-all.sh

run: deps
	@$(MAKE) --no-print-directory build/flowgate certs
	@sh tools/run-dev.sh

bench: build/flowgate certs
	@sh bench/run

# CPU per token verification, uncached and cached (bench/jwt_bench.c).
bench-jwt: build/bench/jwt_bench

build/bench/jwt_bench: bench/jwt_bench.c $(filter-out build/obj/main.o,$(OBJS))
	@mkdir -p build/bench
	$(CC) $(BASE_CFLAGS) $(CFLAGS) $(PKG_CFLAGS) -o $@ $^ $(PKG_LIBS)

install: build/flowgate
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(SYSCONFDIR)/flowgate $(DESTDIR)/lib/systemd/system
	install -m 0755 build/flowgate $(DESTDIR)$(PREFIX)/bin/flowgate
	install -m 0644 conf/flowgate.conf $(DESTDIR)$(SYSCONFDIR)/flowgate/flowgate.conf.example
	sed 's|/usr/local/bin/flowgate|$(PREFIX)/bin/flowgate|' systemd/flowgate.service \
	    > $(DESTDIR)/lib/systemd/system/flowgate.service
	chmod 0644 $(DESTDIR)/lib/systemd/system/flowgate.service

format:
	clang-format -i gateway/*.c gateway/*.h tests/unit/*.c tests/fuzz/*.c

clean:
	rm -rf build
