# recvmmsg(2) and sendmmsg(2): their structures and the calls, for the forwarder
# (sfu/_fastpath.pyx) and the load generator's receive path (bench/_receiver.pyx).
# Declarations only: no module is built from this file.

from posix.time cimport timespec

cdef extern from "<sys/uio.h>" nogil:
    struct iovec:
        void *iov_base
        size_t iov_len

cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    struct msghdr:
        void *msg_name
        socklen_t msg_namelen
        iovec *msg_iov
        size_t msg_iovlen
        void *msg_control
        size_t msg_controllen
        int msg_flags
    struct mmsghdr:
        msghdr msg_hdr
        unsigned int msg_len
    int recvmmsg(int fd, mmsghdr *msgs, unsigned int vlen, int flags, timespec *timeout)
    int sendmmsg(int fd, mmsghdr *msgs, unsigned int vlen, int flags)
    int MSG_DONTWAIT
    int MSG_WAITFORONE
    int MSG_TRUNC
