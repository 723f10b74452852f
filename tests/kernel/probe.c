/* virt-aa kernel-guest probe: one access, its verdict in the exit status.
 *
 *   probe r PATH   open O_RDONLY and read a byte
 *   probe w PATH   open O_WRONLY (existing file) and write a byte
 *   probe o PATH   open O_WRONLY (existing file), write nothing (a disk in use)
 *   probe c PATH   create a new file (O_CREAT|O_EXCL|O_WRONLY)
 *   probe l PATH   open a directory and list it
 *   probe u PATH   connect a SOCK_STREAM unix socket
 *   probe L PATH   (setup, unconfined) bind+listen on PATH, daemonise, accept forever
 *
 * Prints "ok pid=P" (exit 0) or "errno N pid=P TEXT" (exit 1); usage errors
 * exit 64.  The pid ties the kernel's audit records (pid=P) to the probe.
 * Static, so an exec under a file-less profile needs no library mapping.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static int fail(void)
{
    int e = errno;
    printf("errno %d pid=%d %s\n", e, (int)getpid(), strerror(e));
    return 1;
}

static int unix_addr(const char *path, struct sockaddr_un *sa)
{
    memset(sa, 0, sizeof *sa);
    sa->sun_family = AF_UNIX;
    if (strlen(path) >= sizeof sa->sun_path) {
        errno = ENAMETOOLONG;
        return -1;
    }
    strcpy(sa->sun_path, path);
    return 0;
}

int main(int argc, char **argv)
{
    char buf[1];
    int fd;
    struct sockaddr_un sa;

    if (argc != 3 || strlen(argv[1]) != 1) {
        fprintf(stderr, "usage: probe r|w|o|c|l|u|L PATH\n");
        return 64;
    }
    const char *path = argv[2];
    switch (argv[1][0]) {
    case 'r':
        if ((fd = open(path, O_RDONLY)) < 0 || read(fd, buf, 1) < 0)
            return fail();
        break;
    case 'w':
        if ((fd = open(path, O_WRONLY)) < 0 || write(fd, "x", 1) < 0)
            return fail();
        break;
    case 'o':
        if ((fd = open(path, O_WRONLY)) < 0)
            return fail();
        break;
    case 'c':
        if ((fd = open(path, O_CREAT | O_EXCL | O_WRONLY, 0644)) < 0)
            return fail();
        break;
    case 'l': {
        DIR *d = opendir(path);
        if (!d)
            return fail();
        errno = 0;
        while (readdir(d))
            ;
        if (errno)
            return fail();
        break;
    }
    case 'u':
        if ((fd = socket(AF_UNIX, SOCK_STREAM, 0)) < 0 || unix_addr(path, &sa) < 0
            || connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0)
            return fail();
        break;
    case 'L':
        unlink(path);
        if ((fd = socket(AF_UNIX, SOCK_STREAM, 0)) < 0 || unix_addr(path, &sa) < 0
            || bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(fd, 64) < 0)
            return fail();
        if (fork() == 0) {
            setsid();
            for (;;) {
                int c = accept(fd, NULL, NULL);
                if (c >= 0)
                    close(c);
            }
        }
        break;
    default:
        fprintf(stderr, "probe: unknown operation %s\n", argv[1]);
        return 64;
    }
    printf("ok pid=%d\n", (int)getpid());
    return 0;
}
