/* ring_balance.c - a wider sweep than the unit test: the max/mean share of
 * the busiest of N members over many random name sets, per V. Not built by
 * CMake; build and run by hand:
 *
 *   cc -O2 -std=c11 -Isrc/cluster -Isrc/base bench/ring_balance.c \
 *      src/cluster/ring.c src/base/mem.c -lxxhash -o /tmp/ring_balance
 *   /tmp/ring_balance [sets] [members]
 *
 * Prints per V: worst, 99th percentile, mean of max/mean, and the fraction
 * of sets whose busiest member exceeds 1.10x the mean. */
#include "ring.h"

#include <stdio.h>
#include <stdlib.h>

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += UINT64_C(0x9e3779b97f4a7c15));
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    int sets = argc > 1 ? atoi(argv[1]) : 1000;
    int n = argc > 2 ? atoi(argv[2]) : 10;
    if (sets < 1 || n < 2 || n > 64)
        return 2;
    static const unsigned vs[] = {64, 128, 256, 384, 512, 768, 1024, 1536, 2048};
    char buf[64][32];
    const char *names[64];
    double *ratios = malloc((size_t)sets * sizeof *ratios), sh[64];
    if (!ratios)
        return 1;
    printf("%d sets of %d random names\n   V   worst     p99    mean  >1.10\n", sets, n);
    for (size_t k = 0; k < sizeof vs / sizeof vs[0]; k++) {
        uint64_t seed = 1;
        double sum = 0;
        int over = 0;
        for (int s = 0; s < sets; s++) {
            for (int i = 0; i < n; i++) {
                snprintf(buf[i], sizeof buf[i], "10.%u.%u.%u:%u", (unsigned)(splitmix(&seed) & 255),
                         (unsigned)(splitmix(&seed) & 255), (unsigned)(splitmix(&seed) & 255),
                         7946 + i);
                names[i] = buf[i];
            }
            struct am_ring *r;
            if (am_ring_build(&r, names, (size_t)n, vs[k]) != 0)
                return 1;
            am_ring_shares(r, sh);
            double max = 0;
            for (int i = 0; i < n; i++)
                max = sh[i] > max ? sh[i] : max;
            ratios[s] = max * n;
            sum += ratios[s];
            over += ratios[s] > 1.10;
            am_ring_free(r);
        }
        qsort(ratios, (size_t)sets, sizeof *ratios, cmp_double);
        printf("%4u  %.4f  %.4f  %.4f  %5.1f%%\n", vs[k], ratios[sets - 1],
               ratios[(size_t)(0.99 * (sets - 1))], sum / sets, 100.0 * over / sets);
    }
    free(ratios);
    return 0;
}
