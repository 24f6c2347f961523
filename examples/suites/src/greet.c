/* A small program the hello suite builds and tests: greets its argument. */
#include <stdio.h>

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: greet NAME\n");
        return 2;
    }
    printf("hello, %s\n", argv[1]);
    return 0;
}
