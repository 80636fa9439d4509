/*
 * rtpgen: paced G.711 RTP generator and timestamping sink for bench/relay.py.
 *
 *   rtpgen PORT_A PORT_B TARGETS STREAMS SECONDS WARMUP
 *
 * Binds two UDP sockets on 127.0.0.1 (PORT_A stands in for the caller's media address,
 * PORT_B for the callee's). TARGETS is a text file with one "a PORT" or "b PORT" line per
 * stream: stream i is sent from socket A or B to 127.0.0.1:PORT. The first STREAMS lines are
 * used. Each stream carries 50 packets/s of 20 ms PCMU (RTP/AVP PT 0, 160 payload octets,
 * RFC 3551 section 4.5.14); the streams are spread evenly over the 20 ms frame, so the total
 * send rate is 50 * STREAMS packets/s, one packet every 20 ms / STREAMS.
 *
 * Every packet carries, in its payload, the CLOCK_REALTIME time it was handed to sendto()
 * and its frame number; its SSRC names the stream. The same process receives on both sockets
 * with kernel receive timestamps (SO_TIMESTAMPNS, also CLOCK_REALTIME), so
 * delay = arrival - send is measured on one clock. Per stream it computes the RFC 3550
 * section 6.4.1 interarrival jitter J (J += (|D| - J) / 16) twice: with D from the RTP
 * timestamps (the standard figure, which includes our own pacing error) and with D from the
 * actual send times (what the relay added). Packets sent in the first WARMUP seconds count for
 * loss but not for the delay and jitter distributions.
 *
 * Prints one JSON object on stdout. Exit status 0, or 2 on a usage/setup error.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define SSRC_BASE 0x5EB00000u
#define PAYLOAD 160
#define PKT (12 + PAYLOAD)
#define FRAME_NS 20000000LL
#define FINE_BINS 1000000 /* 0.1 us bins up to 100 ms ... */
#define HIST_BINS 2000000 /* ... then 10 us bins up to 10.1 s; the last bin collects overflow */
#define BATCH 64

struct stream {
    int sock;                 /* 0 = A, 1 = B */
    struct sockaddr_in dest;
    uint32_t sent;
    uint32_t received;
    uint32_t dups;
    int64_t last_arrival;
    int64_t last_send;
    uint32_t last_ts;
    double j_added;           /* ns */
    double j_rfc;             /* ns */
    uint8_t *seen;            /* one byte per frame */
};

static int64_t now_ns(clockid_t clk) {
    struct timespec ts;
    clock_gettime(clk, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static uint32_t *hist_delay, *hist_jadd, *hist_jrfc;
static uint64_t n_delay, n_jadd, n_jrfc;
static int64_t max_delay, min_delay = INT64_MAX;
static double max_jadd, max_jrfc;

static void hist_add(uint32_t *h, uint64_t *n, double ns) {
    long bin = ns < 0 ? 0 : (long)(ns / 100.0);
    if (bin >= FINE_BINS) bin = FINE_BINS + (long)((ns - FINE_BINS * 100.0) / 10000.0);
    if (bin >= HIST_BINS) bin = HIST_BINS - 1;
    h[bin]++;
    (*n)++;
}

/* Nearest-rank percentile in microseconds. */
static double hist_pct(const uint32_t *h, uint64_t n, double p) {
    if (n == 0) return -1.0;
    uint64_t rank = (uint64_t)((p / 100.0) * (double)n + 0.999999);
    if (rank < 1) rank = 1;
    uint64_t acc = 0;
    for (long i = 0; i < HIST_BINS; i++) {
        acc += h[i];
        if (acc >= rank)
            return i < FINE_BINS ? (i + 0.5) / 10.0 : FINE_BINS / 10.0 + (i - FINE_BINS + 0.5) * 10.0;
    }
    return -1.0;
}

static int open_sock(int port) {
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    if (fd < 0) return -1;
    int big = 64 << 20, on = 1;
    /* SO_RCVBUFFORCE needs CAP_NET_ADMIN; fall back to the capped SO_RCVBUF. */
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof big) < 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
    if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &big, sizeof big) < 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
    setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &on, sizeof on);
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static struct stream *streams;
static int nstreams, frames, warmup_frames;
static uint64_t unknown, received_total, kernel_ts_missing;
static int64_t measure_from_send;

static void on_packet(const uint8_t *p, ssize_t len, int64_t arrival) {
    if (len < 12 + 12) { unknown++; return; }
    uint32_t ssrc = ntohl(*(const uint32_t *)(p + 8));
    uint32_t idx = ssrc - SSRC_BASE;
    if (idx >= (uint32_t)nstreams) { unknown++; return; }
    struct stream *s = &streams[idx];
    int64_t sent_at;
    uint32_t frame, ts;
    memcpy(&sent_at, p + 12, 8);
    memcpy(&frame, p + 20, 4);
    ts = ntohl(*(const uint32_t *)(p + 4));
    if (frame >= (uint32_t)frames) { unknown++; return; }
    if (s->seen[frame]) { s->dups++; return; }
    s->seen[frame] = 1;
    s->received++;
    received_total++;
    int64_t delay = arrival - sent_at;
    int measured = sent_at >= measure_from_send;
    if (measured) {
        hist_add(hist_delay, &n_delay, (double)delay);
        if (delay > max_delay) max_delay = delay;
        if (delay < min_delay) min_delay = delay;
    }
    if (s->last_arrival) {
        double d_add = (double)((arrival - s->last_arrival) - (sent_at - s->last_send));
        double d_rfc = (double)(arrival - s->last_arrival) -
                       (double)(int32_t)(ts - s->last_ts) * 125000.0; /* 8 kHz clock */
        if (d_add < 0) d_add = -d_add;
        if (d_rfc < 0) d_rfc = -d_rfc;
        s->j_added += (d_add - s->j_added) / 16.0;
        s->j_rfc += (d_rfc - s->j_rfc) / 16.0;
        if (measured) {
            hist_add(hist_jadd, &n_jadd, s->j_added);
            hist_add(hist_jrfc, &n_jrfc, s->j_rfc);
            if (s->j_added > max_jadd) max_jadd = s->j_added;
            if (s->j_rfc > max_jrfc) max_jrfc = s->j_rfc;
        }
    }
    s->last_arrival = arrival;
    s->last_send = sent_at;
    s->last_ts = ts;
}

static uint8_t rbuf[BATCH][2048];
static char cbuf[BATCH][CMSG_SPACE(sizeof(struct timespec)) + 64];

/* Drain a socket; returns the number of packets read. */
static int drain(int fd) {
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    int total = 0;
    for (;;) {
        for (int i = 0; i < BATCH; i++) {
            iov[i].iov_base = rbuf[i];
            iov[i].iov_len = sizeof rbuf[i];
            memset(&msgs[i].msg_hdr, 0, sizeof msgs[i].msg_hdr);
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            msgs[i].msg_hdr.msg_control = cbuf[i];
            msgs[i].msg_hdr.msg_controllen = sizeof cbuf[i];
        }
        int n = recvmmsg(fd, msgs, BATCH, MSG_DONTWAIT, NULL);
        if (n <= 0) return total;
        int64_t fallback = now_ns(CLOCK_REALTIME);
        for (int i = 0; i < n; i++) {
            int64_t arrival = 0;
            for (struct cmsghdr *c = CMSG_FIRSTHDR(&msgs[i].msg_hdr); c;
                 c = CMSG_NXTHDR(&msgs[i].msg_hdr, c)) {
                if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS) {
                    struct timespec t;
                    memcpy(&t, CMSG_DATA(c), sizeof t);
                    arrival = (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec;
                }
            }
            if (!arrival) { arrival = fallback; kernel_ts_missing++; }
            on_packet(rbuf[i], msgs[i].msg_len, arrival);
        }
        total += n;
        if (n < BATCH) return total;
    }
}

int main(int argc, char **argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: rtpgen PORT_A PORT_B TARGETS STREAMS SECONDS WARMUP\n");
        return 2;
    }
    int port_a = atoi(argv[1]), port_b = atoi(argv[2]);
    nstreams = atoi(argv[4]);
    double seconds = atof(argv[5]), warmup = atof(argv[6]);
    if (nstreams < 1 || nstreams > 100000 || seconds <= 0 || seconds > 600 || warmup < 0) {
        fprintf(stderr, "rtpgen: bad STREAMS/SECONDS/WARMUP\n");
        return 2;
    }
    frames = (int)((seconds + warmup) * 50.0);
    warmup_frames = (int)(warmup * 50.0);
    streams = calloc((size_t)nstreams, sizeof *streams);
    hist_delay = calloc(HIST_BINS, sizeof(uint32_t));
    hist_jadd = calloc(HIST_BINS, sizeof(uint32_t));
    hist_jrfc = calloc(HIST_BINS, sizeof(uint32_t));
    if (!streams || !hist_delay || !hist_jadd || !hist_jrfc) return 2;
    FILE *f = fopen(argv[3], "r");
    if (!f) { perror("rtpgen: targets"); return 2; }
    for (int i = 0; i < nstreams; i++) {
        char side;
        int port;
        if (fscanf(f, " %c %d", &side, &port) != 2 || (side != 'a' && side != 'b')) {
            fprintf(stderr, "rtpgen: targets file has fewer than %d valid lines\n", nstreams);
            return 2;
        }
        streams[i].sock = side == 'b';
        streams[i].dest.sin_family = AF_INET;
        streams[i].dest.sin_port = htons((uint16_t)port);
        streams[i].dest.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        streams[i].seen = calloc((size_t)frames, 1);
        if (!streams[i].seen) return 2;
    }
    fclose(f);
    int fds[2] = {open_sock(port_a), open_sock(port_b)};
    if (fds[0] < 0 || fds[1] < 0) { perror("rtpgen: bind"); return 2; }
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0); /* wake up on time, not up to 50 us late */

    uint8_t pkt[PKT];
    memset(pkt, 0xFF, sizeof pkt); /* PCMU silence */
    pkt[0] = 0x80;                 /* V=2, no padding/extension/CSRC */
    pkt[1] = 0;                    /* PT 0 = PCMU */
    uint64_t total = (uint64_t)nstreams * (uint64_t)frames, i = 0, late_1ms = 0;
    double interval = (double)FRAME_NS / nstreams;
    int64_t t0 = now_ns(CLOCK_MONOTONIC) + 50000000LL, max_late = 0, send_errors = 0;
    int64_t rt0 = now_ns(CLOCK_REALTIME) + 50000000LL;
    measure_from_send = rt0 + (int64_t)(warmup * 1e9);
    while (i < total) {
        int64_t now = now_ns(CLOCK_MONOTONIC);
        int burst = 0;
        while (i < total && t0 + (int64_t)(i * interval) <= now && burst < 256) {
            uint32_t sidx = (uint32_t)(i % (uint64_t)nstreams);
            uint32_t frame = (uint32_t)(i / (uint64_t)nstreams);
            struct stream *s = &streams[sidx];
            int64_t late = now - (t0 + (int64_t)(i * interval));
            if (late > max_late) max_late = late;
            if (late > 1000000) late_1ms++;
            uint16_t seq = htons((uint16_t)(frame + sidx * 7919u));
            uint32_t ts = htonl(frame * 160u + sidx * 104729u);
            uint32_t ssrc = htonl(SSRC_BASE + sidx);
            memcpy(pkt + 2, &seq, 2);
            memcpy(pkt + 4, &ts, 4);
            memcpy(pkt + 8, &ssrc, 4);
            int64_t stamp = now_ns(CLOCK_REALTIME);
            memcpy(pkt + 12, &stamp, 8);
            memcpy(pkt + 20, &frame, 4);
            if (sendto(fds[s->sock], pkt, sizeof pkt, 0, (struct sockaddr *)&s->dest,
                       sizeof s->dest) == (ssize_t)sizeof pkt)
                s->sent++;
            else
                send_errors++;
            i++;
            burst++;
        }
        drain(fds[0]);
        drain(fds[1]);
        if (i >= total) break;
        int64_t due = t0 + (int64_t)(i * interval);
        now = now_ns(CLOCK_MONOTONIC);
        if (due > now + 20000) {
            /* sleep, not poll(): a waiting sink would be woken by every relayed packet and
             * that wake-up would be charged to the relay's sendto(); the kernel timestamps
             * keep the arrival times exact while we sleep */
            struct timespec ts = {.tv_sec = due / 1000000000LL, .tv_nsec = due % 1000000000LL};
            clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
        }
    }
    double send_seconds = (now_ns(CLOCK_MONOTONIC) - t0) / 1e9; /* first send to last */
    uint64_t sent_total = 0;
    for (int k = 0; k < nstreams; k++) sent_total += streams[k].sent;
    /* Tail: wait for stragglers, at most 1 s, stop after 200 ms without a packet. */
    int64_t tail_end = now_ns(CLOCK_MONOTONIC) + 1000000000LL, idle_since = now_ns(CLOCK_MONOTONIC);
    while (received_total < sent_total) {
        int64_t now = now_ns(CLOCK_MONOTONIC);
        if (now > tail_end || now - idle_since > 200000000LL) break;
        if (drain(fds[0]) + drain(fds[1]) > 0) idle_since = now;
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    uint64_t dups = 0;
    int lossy = 0;
    for (int k = 0; k < nstreams; k++) {
        dups += streams[k].dups;
        if (streams[k].received < streams[k].sent) lossy++;
    }
    printf("{\"streams\": %d, \"frames_per_stream\": %d, \"rate_pps\": %.1f, "
           "\"sent\": %llu, \"received\": %llu, \"lost\": %lld, \"streams_with_loss\": %d, "
           "\"duplicates\": %llu, \"unknown\": %llu, \"send_errors\": %lld, "
           "\"kernel_timestamps\": %s, \"send_seconds\": %.3f, "
           "\"send_lateness_us\": {\"max\": %.1f, \"over_1ms\": %llu}, "
           "\"delay_us\": {\"samples\": %llu, \"min\": %.1f, \"p50\": %.1f, \"p99\": %.1f, "
           "\"p999\": %.1f, \"max\": %.1f}, "
           "\"jitter_added_us\": {\"p50\": %.2f, \"p99\": %.2f, \"max\": %.2f}, "
           "\"jitter_rfc3550_us\": {\"p50\": %.2f, \"p99\": %.2f, \"max\": %.2f}}\n",
           nstreams, frames, nstreams * 50.0, (unsigned long long)sent_total,
           (unsigned long long)received_total, (long long)(sent_total - received_total), lossy,
           (unsigned long long)dups, (unsigned long long)unknown, (long long)send_errors,
           kernel_ts_missing ? "false" : "true", send_seconds, max_late / 1000.0,
           (unsigned long long)late_1ms, (unsigned long long)n_delay,
           n_delay ? min_delay / 1000.0 : -1.0, hist_pct(hist_delay, n_delay, 50),
           hist_pct(hist_delay, n_delay, 99), hist_pct(hist_delay, n_delay, 99.9),
           max_delay / 1000.0, hist_pct(hist_jadd, n_jadd, 50), hist_pct(hist_jadd, n_jadd, 99),
           max_jadd / 1000.0, hist_pct(hist_jrfc, n_jrfc, 50), hist_pct(hist_jrfc, n_jrfc, 99),
           max_jrfc / 1000.0);
    return 0;
}
