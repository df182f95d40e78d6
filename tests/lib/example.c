/* tests/lib/example.c — kith as a library, as a new user writes it: three
 * nodes, a message, a partition, a heal. Build against an installed kith:
 *   cc example.c $(pkg-config --cflags --libs kith) -o example && ./example */
#include <kith/kith.h>
#include <stdio.h>

int main(void)
{
    kith_net_t *net = kith_net_new();
    kith_node_t *a = kith_node_new(net, "a", NULL);
    kith_node_t *b = kith_node_new(net, "b", NULL);
    kith_node_t *c = kith_node_new(net, "c", NULL);
    if (!a || !b || !c || kith_node_trust(a, b) || kith_node_trust(a, c) || kith_node_trust(b, c)) {
        fprintf(stderr, "setup: %s\n", kith_last_error());
        return 1;
    }
    int sent = kith_node_send(a, "b", "hello b", 5000);           /* KITH_ACKED */
    kith_msg_t *m = NULL;
    if (sent != KITH_ACKED || kith_node_recv(b, &m, 5000) != 0)
        return fprintf(stderr, "send/recv: %s\n", kith_last_error()), 1;
    printf("b got %s\n", kith_msg_json(m));
    kith_msg_destroy(&m);

    kith_net_partition(net, a, b);
    int cut = kith_node_send(a, "b", "anyone there?", 300);       /* KITH_OFFLINE */
    kith_net_heal(net, a, b);
    int healed = kith_node_send(a, "b", "back again", 5000);      /* KITH_ACKED */
    printf("kith %s: sent %d, partitioned %d, healed %d\n", kith_version(), sent, cut, healed);
    kith_net_destroy(&net);                                       /* a, b and c too */
    return sent == KITH_ACKED && cut == KITH_OFFLINE && healed == KITH_ACKED ? 0 : 1;
}
