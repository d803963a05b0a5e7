/*
 * pause: the process that holds a pod's namespaces open (the sandbox container).
 * It sleeps until told to stop, exits 0 on SIGINT or SIGTERM, and, being PID 1 of
 * the pod when the pod shares its PID namespace, reaps orphaned children.
 * Built by k8s/images.sh with `gcc -static -Os`; `pause -v` prints a version.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_stop(int sig) { (void)sig; _exit(0); }

static void on_child(int sig) {
    int saved = errno;
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {}
    errno = saved;
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "-v") == 0) {
        puts("pause (switchd k8s/images/pause.c)");
        return 0;
    }
    if (getpid() != 1) fputs("pause: warning: not running as PID 1\n", stderr);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop;
    if (sigaction(SIGINT, &sa, NULL) < 0 || sigaction(SIGTERM, &sa, NULL) < 0) return 1;
    sa.sa_handler = on_child;
    sa.sa_flags = SA_NOCLDSTOP | SA_RESTART;
    if (sigaction(SIGCHLD, &sa, NULL) < 0) return 2;

    for (;;) pause();
}
