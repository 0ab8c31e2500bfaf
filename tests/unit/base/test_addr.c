/* test_addr.c - HOST:PORT parsing and formatting (src/base/addr.h). */
#include "addr.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>

/* Parses s and formats the result back. */
static void parses_to(const char *s, int default_port, const char *want)
{
    struct sockaddr_in sa;
    memset(&sa, 0xab, sizeof sa);
    cr_assert_eq(am_addr_parse(s, default_port, &sa), 0, "\"%s\" refused", s);
    cr_assert_eq(sa.sin_family, AF_INET);
    char out[32];
    am_addr_format(&sa, out, sizeof out);
    cr_assert_str_eq(out, want, "\"%s\" gave %s", s, out);
}

static void refused(const char *s, int default_port)
{
    struct sockaddr_in sa;
    cr_assert_eq(am_addr_parse(s, default_port, &sa), -EINVAL, "\"%s\" accepted", s);
}

Test(addr, parses_ipv4_literals_with_a_port)
{
    parses_to("127.0.0.1:7946", 0, "127.0.0.1:7946");
    parses_to("10.77.0.3:1", 0, "10.77.0.3:1");
    parses_to("0.0.0.0:65535", 0, "0.0.0.0:65535");
    parses_to("255.255.255.255:80", 0, "255.255.255.255:80");
    parses_to("127.0.0.1:007946", 0, "127.0.0.1:7946");
}

Test(addr, parses_localhost_as_the_loopback_address)
{
    parses_to("localhost:8080", 0, "127.0.0.1:8080");
    parses_to("localhost", 7946, "127.0.0.1:7946");
}

Test(addr, uses_the_default_port_when_none_is_given)
{
    parses_to("10.0.0.1", 7946, "10.0.0.1:7946");
    parses_to("10.0.0.1:1234", 7946, "10.0.0.1:1234");
}

Test(addr, stores_address_and_port_in_network_order)
{
    struct sockaddr_in sa;
    cr_assert_eq(am_addr_parse("1.2.3.4:258", 0, &sa), 0);
    const uint8_t *a = (const uint8_t *)&sa.sin_addr.s_addr;
    cr_assert(a[0] == 1 && a[1] == 2 && a[2] == 3 && a[3] == 4);
    const uint8_t *port = (const uint8_t *)&sa.sin_port;
    cr_assert(port[0] == 1 && port[1] == 2);
}

Test(addr, refuses_missing_or_empty_parts)
{
    refused("", 7946);
    refused("", 0);
    refused(":7946", 0);
    refused("127.0.0.1:", 0);
    refused("127.0.0.1:", 7946);
    refused("127.0.0.1", 0);
    refused(":", 7946);
}

Test(addr, refuses_ports_out_of_range)
{
    refused("127.0.0.1:0", 0);
    refused("127.0.0.1:65536", 0);
    refused("127.0.0.1:-1", 0);
    refused("127.0.0.1:99999999999999999999999", 0);
    refused("127.0.0.1", 65536);
    refused("127.0.0.1", -1);
}

Test(addr, refuses_ports_that_are_not_plain_decimal)
{
    refused("127.0.0.1:80x", 0);
    refused("127.0.0.1:abc", 0);
    refused("127.0.0.1:0x50", 0);
    refused("127.0.0.1:8 0", 0);
    refused("127.0.0.1:80 ", 0);
    /* strtol would skip a sign and leading blanks: a port is digits only. */
    refused("127.0.0.1:+80", 0);
    refused("127.0.0.1: 80", 0);
    refused("127.0.0.1:\t80", 0);
}

Test(addr, refuses_hosts_that_are_not_ipv4_literals)
{
    refused("256.0.0.1:80", 0);
    refused("1.2.3:80", 0);
    refused("1.2.3.4.5:80", 0);
    refused("01.2.3.4:80", 0);
    refused(" 1.2.3.4:80", 0);
    refused("example.com:80", 0);
    refused("LOCALHOST:80", 0);
    refused("::1", 7946);
    refused("[::1]:80", 0);
    refused("1.2.3.4:80:90", 0);
}

Test(addr, refuses_a_host_too_long_for_its_buffer)
{
    char s[200];
    memset(s, '1', sizeof s);
    memcpy(s + 150, ":80", 4);
    refused(s, 0);
    /* 63 characters fit the buffer but are no address; 64 do not fit. */
    memset(s, '1', 64);
    memcpy(s + 63, ":80", 4);
    refused(s, 0);
    memcpy(s + 64, ":80", 4);
    refused(s, 0);
}

Test(addr, formats_the_longest_address_in_22_bytes)
{
    struct sockaddr_in sa;
    cr_assert_eq(am_addr_parse("255.255.255.255:65535", 0, &sa), 0);
    char out[22];
    am_addr_format(&sa, out, sizeof out);
    cr_assert_str_eq(out, "255.255.255.255:65535");
    char small[8];
    am_addr_format(&sa, small, sizeof small);
    cr_assert_str_eq(small, "255.255", "truncated, still terminated");
}
