/*
 * What the kernel charges a sender per UDP datagram on this machine's loopback: the
 * part of a forwarder's cost that no forwarder can avoid (README, "The forwarding
 * loop: twin, Cython, floor").
 *
 *   cc -O2 -Wall -o /tmp/loopback_send bench/loopback_send.c
 *   /tmp/loopback_send [datagrams per case, default 200000] [rounds, default 5]
 *
 * A child process drains the receiving socket (as a subscriber would), so the cost
 * includes what loopback does in the sender's context: delivering the datagram into
 * the receiver's socket. Each case sends 1200-byte datagrams as fast as it can:
 *   sendto        an unconnected socket, one system call per datagram (the shared port)
 *   connected     a connected socket, send() (no route lookup per datagram)
 *   sendmmsg-4    sendmmsg(2) in batches of 4 (a frame's burst to one subscriber)
 *   sendmmsg-16   sendmmsg(2) in batches of 16
 * Cases are interleaved round by round; each line is the median of the rounds, in
 * microseconds of the sender's CPU (user + system, getrusage) per datagram.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define SIZE 1200
#define BATCH_MAX 16
#define CASES 4

static const char *names[CASES] = {"sendto", "connected", "sendmmsg-4", "sendmmsg-16"};

static double cpu_seconds(void) {
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    return usage.ru_utime.tv_sec + usage.ru_utime.tv_usec * 1e-6 + usage.ru_stime.tv_sec +
           usage.ru_stime.tv_usec * 1e-6;
}

static void drain(int fd) {
    static char buffers[64][2048];
    struct mmsghdr messages[64];
    struct iovec vectors[64];
    memset(messages, 0, sizeof(messages));
    for (int i = 0; i < 64; i++) {
        vectors[i].iov_base = buffers[i];
        vectors[i].iov_len = sizeof(buffers[i]);
        messages[i].msg_hdr.msg_iov = &vectors[i];
        messages[i].msg_hdr.msg_iovlen = 1;
    }
    for (;;)
        recvmmsg(fd, messages, 64, MSG_WAITFORONE, NULL);
}

/* Sends `count` datagrams by the case's method; returns how many the kernel took. */
static long send_case(int which, int fd, const struct sockaddr_in *to, long count) {
    static char payload[SIZE];
    struct mmsghdr messages[BATCH_MAX];
    struct iovec vector = {payload, SIZE};
    int batch = which == 2 ? 4 : BATCH_MAX;
    long sent = 0;
    memset(messages, 0, sizeof(messages));
    for (int i = 0; i < BATCH_MAX; i++) {
        messages[i].msg_hdr.msg_name = (void *)to;
        messages[i].msg_hdr.msg_namelen = sizeof(*to);
        messages[i].msg_hdr.msg_iov = &vector;
        messages[i].msg_hdr.msg_iovlen = 1;
    }
    for (long i = 0; i < count;) {
        if (which == 0) {
            sent += sendto(fd, payload, SIZE, 0, (const struct sockaddr *)to, sizeof(*to)) == SIZE;
            i++;
        } else if (which == 1) {
            sent += send(fd, payload, SIZE, 0) == SIZE;
            i++;
        } else {
            int n = sendmmsg(fd, messages, batch, 0);
            sent += n > 0 ? n : 0;
            i += batch;
        }
    }
    return sent;
}

static int compare(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    long count = argc > 1 ? atol(argv[1]) : 200000;
    int rounds = argc > 2 ? atoi(argv[2]) : 5;
    count = (count + BATCH_MAX - 1) / BATCH_MAX * BATCH_MAX; /* whole batches in every case */
    if (count <= 0 || rounds <= 0 || rounds > 99) {
        fprintf(stderr, "usage: %s [datagrams > 0] [rounds 1-99]\n", argv[0]);
        return 2;
    }
    int receiver = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t length = sizeof(to);
    int buffer = 4 << 20;
    setsockopt(receiver, SOL_SOCKET, SO_RCVBUF, &buffer, sizeof(buffer));
    if (bind(receiver, (struct sockaddr *)&to, sizeof(to)) != 0 ||
        getsockname(receiver, (struct sockaddr *)&to, &length) != 0) {
        perror("bind");
        return 1;
    }
    pid_t child = fork();
    if (child == 0) {
        drain(receiver);
        return 0;
    }
    close(receiver);
    int unconnected = socket(AF_INET, SOCK_DGRAM, 0);
    int connected = socket(AF_INET, SOCK_DGRAM, 0);
    if (connect(connected, (struct sockaddr *)&to, sizeof(to)) != 0) {
        perror("connect");
        kill(child, SIGKILL);
        return 1;
    }
    double results[CASES][99];
    long taken[CASES] = {0};
    for (int round = 0; round < rounds; round++) {
        for (int which = 0; which < CASES; which++) {
            double start = cpu_seconds();
            taken[which] += send_case(which, which == 1 ? connected : unconnected, &to, count);
            results[which][round] = (cpu_seconds() - start) * 1e6 / count;
        }
    }
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    printf("%-12s %10s %10s %10s %9s\n", "case", "median-us", "min-us", "max-us", "sent-%");
    for (int which = 0; which < CASES; which++) {
        qsort(results[which], rounds, sizeof(double), compare);
        printf("%-12s %10.2f %10.2f %10.2f %9.1f\n", names[which], results[which][rounds / 2],
               results[which][0], results[which][rounds - 1],
               100.0 * taken[which] / ((double)count * rounds));
    }
    return 0;
}
