/* Junk at a fixed rate, for the failover tests' flood (a LAN host gone wild or hostile).
 *
 *   flood udp DST_IP PORT RATE SECONDS      datagrams to DST_IP:PORT
 *   flood l2 IFNAME RATE SECONDS            broadcast Ethernet frames, EtherType 0x88B5
 *
 * Every packet starts like a voxnode message ("VXHA", version 1, a body length) so that it
 * passes the kernel's socket filters and costs the receiver a parse; the rest is random.
 * Prints the number of packets sent. Written in C: Python cannot send 100,000 packets a
 * second here. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: flood udp DST PORT RATE SECONDS | flood l2 IFNAME RATE SECONDS\n");
        return 2;
    }
    int l2 = strcmp(argv[1], "l2") == 0;
    double rate = atof(argv[l2 ? 3 : 4]), seconds = atof(argv[l2 ? 4 : 5]);
    unsigned char packet[128];
    size_t len;
    int sock;
    struct sockaddr_in to = {0};
    srand((unsigned)getpid());
    if (l2) {
        sock = socket(AF_PACKET, SOCK_RAW, 0);
        struct sockaddr_ll where = {0};
        where.sll_family = AF_PACKET;
        where.sll_protocol = htons(0x88B5);
        where.sll_ifindex = (int)if_nametoindex(argv[2]);
        if (sock < 0 || bind(sock, (struct sockaddr *)&where, sizeof where) < 0) {
            perror("l2 socket");
            return 1;
        }
        memset(packet, 0xff, 6);
        unsigned char src[6] = {0x02, 0x66, 0x66, 0x00, 0x00, 0x01};
        memcpy(packet + 6, src, 6);
        packet[12] = 0x88, packet[13] = 0xB5;
        packet[14] = 0, packet[15] = 100;
        memcpy(packet + 16, "VXHA\x01\x00\x40", 7);
        len = 116;
    } else {
        sock = socket(AF_INET, SOCK_DGRAM, 0);
        to.sin_family = AF_INET;
        to.sin_port = htons((unsigned short)atoi(argv[3]));
        if (sock < 0 || inet_pton(AF_INET, argv[2], &to.sin_addr) != 1) {
            perror("udp socket");
            return 1;
        }
        memcpy(packet, "VXHA\x01\x00\x40", 7);
        len = 100;
    }
    long sent = 0;
    double start = now(), end = start + seconds;
    while (now() < end) {
        long due = (long)((now() - start) * rate);
        for (; sent < due; sent++) {
            size_t at = l2 ? 23 : 7;
            for (size_t i = at; i < len; i++) packet[i] = (unsigned char)rand();
            if (l2)
                send(sock, packet, len, 0);
            else
                sendto(sock, packet, len, 0, (struct sockaddr *)&to, sizeof to);
        }
        usleep(200);
    }
    printf("%ld\n", sent);
    return 0;
}
