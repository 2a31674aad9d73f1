/* sseload: open many Server-Sent Events streams on loopback and count what arrives.
 *
 * Usage: sseload HOST PORT PATH CONNS EVENTS_PER_CONN [TIMEOUT_S] [EXTRA_HEADER]
 *
 * Opens CONNS keep-alive HTTP/1.1 GET requests for PATH (Accept: text/event-stream),
 * prints "READY <ms>" once every stream has answered 200 with its headers, then counts
 * "data:" lines until CONNS*EVENTS_PER_CONN have arrived or TIMEOUT_S passes.
 * If a data line carries "ts=<microseconds since the epoch>", the publish-to-delivery
 * latency is recorded. PATH may contain "%d", replaced by the connection's index.
 * Final line: "DONE events=E conns=C secs=S rate=R/s p50_ms=.. p99_ms=.. max_ms=.. ok=0|1
 * first_us=.. last_us=.." (first_us, last_us: wall-clock microseconds since the epoch at
 * which the first and the last event arrived, 0 if none did).
 *
 * Long-poll mode (SSELOAD_MATCH=ts= in the environment): any 200 response counts, and every
 * occurrence of the match string in a response body is one event (its ts= gives the latency);
 * READY is printed once every request has been sent and CONNS connections are open, since a
 * parked long poll sends no headers until it answers.
 * WebSocket mode (SSELOAD_WS=1): each connection is an RFC 6455 upgrade (status 101); every
 * text frame whose payload contains "ts=" is one event (SSELOAD_MATCH, if set, replaces "ts=").
 * Ping frames are answered; other frames are skipped.
 *
 * Adapted for tidings' bench/ from the independent instrument in ../shared/tools/sseload.c
 * (WebSocket mode added). Build: cc -O2 -o sseload sseload.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define LINE_MAX_LEN 512
#define MAX_SAMPLES 4000000

typedef struct {
    int fd;
    /* WebSocket frame parser state */
    int ws_hdr_len;
    unsigned char ws_hdr[14];
    long long ws_left;
    int ws_opcode;
    int ws_plen;
    char ws_payload[LINE_MAX_LEN];
    int headers_done;
    int status_ok;
    int line_len;
    long events;
    char line[LINE_MAX_LEN];
} conn_t;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static long long wall_us(void) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (long long)tv.tv_sec * 1000000LL + tv.tv_usec;
}

static int cmp_ll(const void *a, const void *b) {
    long long x = *(const long long *)a, y = *(const long long *)b;
    return (x > y) - (x < y);
}

static const char *match;
static long long *samples;
static long nsamples;
static long total_events;
static int ready_count;
static int ws_mode;

static void record_ts(const char *t) {
    long long sent = atoll(t + 3);
    if (sent > 0 && nsamples < MAX_SAMPLES) samples[nsamples++] = wall_us() - sent;
}

static void handle_line(conn_t *c) {
    c->line[c->line_len] = 0;
    if (!c->headers_done) {
        if (c->line_len == 0 || (c->line_len == 1 && c->line[0] == '\r')) {
            c->headers_done = 1;
            if (c->status_ok) ready_count++;
        } else if (strncmp(c->line, "HTTP/1.", 7) == 0) {
            c->status_ok = strncmp(c->line + 9, ws_mode ? "101" : "200", 3) == 0;
            if (!c->status_ok) fprintf(stderr, "status: %s\n", c->line);
        }
        return;
    }
    if (match) {
        for (char *t = strstr(c->line, match); t; t = strstr(t + 1, match)) {
            c->events++;
            total_events++;
            char *ts = strstr(t, "ts=");
            if (ts) record_ts(ts);
        }
        return;
    }
    if (strncmp(c->line, "data:", 5) == 0) {
        c->events++;
        total_events++;
        char *t = strstr(c->line, "ts=");
        if (t) record_ts(t);
    }
}

static void ws_frame_done(conn_t *c) {
    if (c->ws_opcode == 1) {
        c->ws_payload[c->ws_plen] = 0;
        const char *m = match ? match : "ts=";
        char *t = strstr(c->ws_payload, m);
        if (t) {
            c->events++;
            total_events++;
            char *ts = strstr(t, "ts=");
            if (ts) record_ts(ts);
        }
    } else if (c->ws_opcode == 9) {
        /* pong with the same (short) payload, masked with a zero key */
        unsigned char out[2 + 4 + 125];
        int n = c->ws_plen > 125 ? 125 : c->ws_plen;
        out[0] = 0x8A;
        out[1] = 0x80 | n;
        memset(out + 2, 0, 4);
        memcpy(out + 6, c->ws_payload, n);
        if (write(c->fd, out, 6 + n) < 0) { /* the read side will notice */ }
    }
}

/* Feed bytes received after the 101 headers; server frames are never masked. */
static void ws_feed(conn_t *c, const char *p, ssize_t n) {
    ssize_t i = 0;
    while (i < n) {
        if (c->ws_left < 0) {
            c->ws_hdr[c->ws_hdr_len++] = (unsigned char)p[i++];
            if (c->ws_hdr_len < 2) continue;
            int l7 = c->ws_hdr[1] & 0x7f;
            int need = 2 + (l7 == 126 ? 2 : l7 == 127 ? 8 : 0) + ((c->ws_hdr[1] & 0x80) ? 4 : 0);
            if (c->ws_hdr_len < need) continue;
            long long len = l7;
            if (l7 == 126) len = (c->ws_hdr[2] << 8) | c->ws_hdr[3];
            else if (l7 == 127) { len = 0; for (int k = 2; k < 10; k++) len = (len << 8) | c->ws_hdr[k]; }
            c->ws_opcode = c->ws_hdr[0] & 0x0f;
            c->ws_left = len;
            c->ws_plen = 0;
            c->ws_hdr_len = 0;
            if (len == 0) { ws_frame_done(c); c->ws_left = -1; }
            continue;
        }
        ssize_t take = n - i < c->ws_left ? n - i : (ssize_t)c->ws_left;
        int room = LINE_MAX_LEN - 1 - c->ws_plen;
        int copy = take < room ? (int)take : room;
        memcpy(c->ws_payload + c->ws_plen, p + i, copy);
        c->ws_plen += copy;
        c->ws_left -= take;
        i += take;
        if (c->ws_left == 0) { ws_frame_done(c); c->ws_left = -1; }
    }
}

int main(int argc, char **argv) {
    if (argc < 6) {
        fprintf(stderr, "usage: %s HOST PORT PATH CONNS EVENTS_PER_CONN [TIMEOUT_S] [EXTRA_HEADER]\n", argv[0]);
        return 2;
    }
    const char *host = argv[1];
    int port = atoi(argv[2]);
    const char *path = argv[3];
    int nconn = atoi(argv[4]);
    long per_conn = atol(argv[5]);
    double timeout = argc > 6 ? atof(argv[6]) : 60.0;
    const char *extra = argc > 7 ? argv[7] : NULL;
    match = getenv("SSELOAD_MATCH");
    ws_mode = getenv("SSELOAD_WS") && *getenv("SSELOAD_WS") && strcmp(getenv("SSELOAD_WS"), "0") != 0;
    if (match && !*match) match = NULL;

    struct rlimit rl = {nconn + 64, nconn + 64};
    setrlimit(RLIMIT_NOFILE, &rl);
    samples = malloc(sizeof(long long) * MAX_SAMPLES);
    conn_t *conns = calloc(nconn, sizeof(conn_t));
    int ep = epoll_create1(0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, host, &addr.sin_addr);

    double t0 = now_s();
    for (int i = 0; i < nconn; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0) { perror("socket"); return 1; }
        if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) { perror("connect"); return 1; }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        char p[1024], req[2048];
        snprintf(p, sizeof p, path, i);
        int n = ws_mode
            ? snprintf(req, sizeof req,
                       "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                       "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n%s%s\r\n",
                       p, host, port, extra ? extra : "", extra ? "\r\n" : "")
            : snprintf(req, sizeof req,
                       "GET %s HTTP/1.1\r\nHost: %s:%d\r\nAccept: text/event-stream\r\n%s%s\r\n",
                       p, host, port, extra ? extra : "", extra ? "\r\n" : "");
        if (write(fd, req, n) != n) { perror("write"); return 1; }
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
        conns[i].fd = fd;
        conns[i].ws_left = -1;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &conns[i]};
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    }

    long expect = per_conn * nconn;
    int announced = 0, closed = 0;
    double t_first = 0, t_last = 0;
    long long wall_first = 0, wall_last = 0;
    static char buf[1 << 16];
    struct epoll_event evs[1024];
    while (total_events < expect) {
        double now = now_s();
        if (now - t0 > timeout) break;
        int k = epoll_wait(ep, evs, 1024, 100);
        for (int e = 0; e < k; e++) {
            conn_t *c = evs[e].data.ptr;
            for (;;) {
                ssize_t r = read(c->fd, buf, sizeof buf);
                if (r == 0) { closed++; epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL); close(c->fd); break; }
                if (r < 0) {
                    if (errno != EAGAIN) { closed++; epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL); close(c->fd); }
                    break;
                }
                long before = total_events;
                for (ssize_t j = 0; j < r; j++) {
                    if (ws_mode && c->headers_done) { ws_feed(c, buf + j, r - j); break; }
                    char ch = buf[j];
                    if (ch == '\n') { handle_line(c); c->line_len = 0; }
                    else if (c->line_len < LINE_MAX_LEN - 1) c->line[c->line_len++] = ch;
                }
                if (match && !ws_mode && c->headers_done && c->line_len > 0) { handle_line(c); c->line_len = 0; }
                if (total_events > before) {
                    if (t_first == 0) { t_first = now_s(); wall_first = wall_us(); }
                    t_last = now_s();
                    wall_last = wall_us();
                }
            }
        }
        if (!announced && (ready_count == nconn || (match && now_s() - t0 > 1.0 + nconn * 0.0002))) {
            printf("READY %.0f\n", (now_s() - t0) * 1000);
            fflush(stdout);
            announced = 1;
        }
    }
    double secs = t_last > t_first ? t_last - t_first : 0;
    double p50 = 0, p99 = 0, mx = 0;
    if (nsamples) {
        qsort(samples, nsamples, sizeof(long long), cmp_ll);
        p50 = samples[nsamples / 2] / 1000.0;
        p99 = samples[(long)(nsamples * 0.99)] / 1000.0;
        mx = samples[nsamples - 1] / 1000.0;
    }
    if (!announced) fprintf(stderr, "only %d of %d streams became ready\n", ready_count, nconn);
    printf("DONE events=%ld conns=%d ready=%d closed=%d secs=%.3f rate=%.0f/s p50_ms=%.2f p99_ms=%.2f max_ms=%.2f ok=%d"
           " first_us=%lld last_us=%lld\n",
           total_events, nconn, ready_count, closed, secs, secs > 0 ? total_events / secs : 0, p50, p99, mx,
           total_events >= expect, wall_first, wall_last);
    return total_events >= expect ? 0 : 1;
}
