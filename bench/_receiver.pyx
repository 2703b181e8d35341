# cython: language_level=3, boundscheck=False, wraparound=False
"""The load generator's receive path in C (bench/peer.py uses it when built).

A subscriber socket gets up to 9 packets for each one a publisher sends, so the
generator's per-packet receive cost decides whether it stays cheaper than the server
it measures. Here one ``recvmmsg(2)`` reads a batch of datagrams; each RTP packet costs
one record (SSRC, sequence number, length, arrival time) in arrays that
grow by doubling, and no Python object, except one packet in ``sample_every`` that
goes back to Python to be decrypted and checked. STUN, DTLS and RTCP go back to
Python with their source address, for aioice and the RTCP counter.

The arrival time is the kernel's (``SO_TIMESTAMPNS``, taken as the datagram reached
the socket), so the generator may read its sockets late, in larger batches, without
adding that delay to the latency it measures.
"""

from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.errno cimport EAGAIN, EINTR, errno
from libc.stdint cimport uint8_t, uint16_t, uint32_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memset
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

from sfu._mmsg cimport MSG_DONTWAIT, iovec, mmsghdr, msghdr, recvmmsg, socklen_t

cdef extern from "<netinet/in.h>" nogil:
    struct in_addr:
        uint32_t s_addr
    struct sockaddr_in:
        unsigned short sin_family
        unsigned short sin_port
        in_addr sin_addr
    uint16_t ntohs(uint16_t)

cdef extern from "<sys/socket.h>" nogil:
    struct cmsghdr:
        size_t cmsg_len
        int cmsg_level
        int cmsg_type
    cmsghdr *CMSG_FIRSTHDR(msghdr *msgh)
    cmsghdr *CMSG_NXTHDR(msghdr *msgh, cmsghdr *cmsg)
    unsigned char *CMSG_DATA(cmsghdr *cmsg)
    int setsockopt(int fd, int level, int name, const void *value, socklen_t length)
    int SOL_SOCKET
    int SO_TIMESTAMPNS
    int SCM_TIMESTAMPNS

cdef extern from "<time.h>" nogil:
    int CLOCK_REALTIME

cdef extern from "<arpa/inet.h>" nogil:
    const char *inet_ntop(int af, const void *src, char *dst, socklen_t size)
    int AF_INET


cdef enum:
    BATCH = 64
    SLOT = 2048  # larger than any datagram the bench sends
    CONTROL = 64  # room for one SCM_TIMESTAMPNS control message


cdef class Receiver:
    cdef int fd
    cdef int sample_every
    cdef Py_ssize_t count, capacity
    cdef uint32_t *ssrcs
    cdef uint16_t *seqs
    cdef uint16_t *lengths
    cdef double *times
    cdef uint8_t *slots
    cdef mmsghdr messages[BATCH]
    cdef iovec vectors[BATCH]
    cdef sockaddr_in sources[BATCH]
    cdef uint8_t controls[BATCH][CONTROL]

    def __cinit__(self, int fd, int sample_every=64, Py_ssize_t capacity=65536):
        cdef int i
        self.fd = fd
        self.sample_every = sample_every
        self.count = 0
        self.capacity = capacity
        self.ssrcs = <uint32_t *>malloc(capacity * sizeof(uint32_t))
        self.seqs = <uint16_t *>malloc(capacity * sizeof(uint16_t))
        self.lengths = <uint16_t *>malloc(capacity * sizeof(uint16_t))
        self.times = <double *>malloc(capacity * sizeof(double))
        self.slots = <uint8_t *>malloc(BATCH * SLOT)
        if not (self.ssrcs and self.seqs and self.lengths and self.times and self.slots):
            raise MemoryError()
        memset(self.messages, 0, sizeof(self.messages))
        for i in range(BATCH):
            self.vectors[i].iov_base = self.slots + i * SLOT
            self.vectors[i].iov_len = SLOT
            self.messages[i].msg_hdr.msg_iov = &self.vectors[i]
            self.messages[i].msg_hdr.msg_iovlen = 1
            self.messages[i].msg_hdr.msg_name = &self.sources[i]
            self.messages[i].msg_hdr.msg_control = self.controls[i]
        cdef int on = 1
        if setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &on, sizeof(on)) != 0:
            raise OSError(errno, "SO_TIMESTAMPNS")

    def __dealloc__(self):
        free(self.ssrcs)
        free(self.seqs)
        free(self.lengths)
        free(self.times)
        free(self.slots)

    cdef int _grow(self) except -1:
        cdef Py_ssize_t capacity = self.capacity * 2
        cdef void *p
        cdef int name
        for name in range(4):
            if name == 0:
                p = realloc(self.ssrcs, capacity * sizeof(uint32_t))
                if p == NULL:
                    raise MemoryError()
                self.ssrcs = <uint32_t *>p
            elif name == 1:
                p = realloc(self.seqs, capacity * sizeof(uint16_t))
                if p == NULL:
                    raise MemoryError()
                self.seqs = <uint16_t *>p
            elif name == 2:
                p = realloc(self.lengths, capacity * sizeof(uint16_t))
                if p == NULL:
                    raise MemoryError()
                self.lengths = <uint16_t *>p
            else:
                p = realloc(self.times, capacity * sizeof(double))
                if p == NULL:
                    raise MemoryError()
                self.times = <double *>p
        self.capacity = capacity
        return 0

    def drain(self):
        """Read every datagram queued on the socket. Returns (others, samples): the
        non-RTP datagrams as (data, (host, port)), and the sampled RTP packets as
        (record index, data)."""
        cdef list others = []
        cdef list samples = []
        cdef int n, i
        cdef unsigned int length
        cdef uint8_t *data
        cdef timespec now, wall
        cdef double arrived, read_at, wall_to_monotonic
        cdef cmsghdr *control
        cdef timespec *stamp
        cdef char host[16]
        while True:
            for i in range(BATCH):
                self.messages[i].msg_hdr.msg_namelen = sizeof(sockaddr_in)
                self.messages[i].msg_hdr.msg_controllen = CONTROL
            n = recvmmsg(self.fd, self.messages, BATCH, MSG_DONTWAIT, NULL)
            if n < 0:
                if errno == EINTR:
                    continue
                if errno == EAGAIN:
                    break
                raise OSError(errno, "recvmmsg")
            clock_gettime(CLOCK_MONOTONIC, &now)
            clock_gettime(CLOCK_REALTIME, &wall)
            read_at = now.tv_sec + now.tv_nsec * 1e-9
            wall_to_monotonic = read_at - (wall.tv_sec + wall.tv_nsec * 1e-9)
            for i in range(n):
                arrived = read_at  # unless the kernel stamped it
                control = CMSG_FIRSTHDR(&self.messages[i].msg_hdr)
                while control != NULL:
                    if control.cmsg_level == SOL_SOCKET and control.cmsg_type == SCM_TIMESTAMPNS:
                        stamp = <timespec *>CMSG_DATA(control)
                        arrived = stamp.tv_sec + stamp.tv_nsec * 1e-9 + wall_to_monotonic
                        break
                    control = CMSG_NXTHDR(&self.messages[i].msg_hdr, control)
                data = self.slots + i * SLOT
                length = self.messages[i].msg_len
                if length >= 12 and 127 < data[0] < 192 and not (191 < data[1] < 224):
                    if self.count == self.capacity:
                        self._grow()
                    self.ssrcs[self.count] = ((<uint32_t>data[8] << 24) | (data[9] << 16)
                                              | (data[10] << 8) | data[11])
                    self.seqs[self.count] = (data[2] << 8) | data[3]
                    self.lengths[self.count] = <uint16_t>length
                    self.times[self.count] = arrived
                    if self.count % self.sample_every == 0:
                        samples.append((self.count, PyBytes_FromStringAndSize(
                            <char *>data, length)))
                    self.count += 1
                else:
                    inet_ntop(AF_INET, &self.sources[i].sin_addr, host, sizeof(host))
                    others.append((PyBytes_FromStringAndSize(<char *>data, length),
                                   (host.decode(), ntohs(self.sources[i].sin_port))))
            if n < BATCH:
                break
        return others, samples

    def records(self):
        """Every RTP record so far: (ssrcs, seqs, lengths, times) as bytes, to load
        into array.array('I'), ('H'), ('H') and ('d')."""
        return (PyBytes_FromStringAndSize(<char *>self.ssrcs, self.count * sizeof(uint32_t)),
                PyBytes_FromStringAndSize(<char *>self.seqs, self.count * sizeof(uint16_t)),
                PyBytes_FromStringAndSize(<char *>self.lengths, self.count * sizeof(uint16_t)),
                PyBytes_FromStringAndSize(<char *>self.times, self.count * sizeof(double)))
