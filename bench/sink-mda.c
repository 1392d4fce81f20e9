/* Benchmark MDA sink: reads the whole message from stdin, then appends one
 * byte to the counter file named by argv[1] (O_APPEND: concurrent sinks never
 * lose a count), so the file size is the number of messages delivered.
 * Built by bench/delivery.py with gcc at bench time; never committed as a binary. */
#include <fcntl.h>
#include <unistd.h>

int main(int argc, char **argv) {
    static char buf[65536];
    ssize_t n;
    int fd;
    if (argc < 2)
        return 64;
    while ((n = read(0, buf, sizeof buf)) > 0)
        ;
    if (n < 0)
        return 75;
    fd = open(argv[1], O_WRONLY | O_APPEND | O_CREAT, 0600);
    if (fd < 0 || write(fd, "x", 1) != 1)
        return 75;
    return 0;
}
