/* tests/turn_source_test.c — inbox entries into turns
 * (router/workers/turn_source.c): every envelope kind an inbox admits starts
 * a turn with the right text and envelope type, Meerkat's
 * incarnation_fenced_message included (it was once dropped, deleting an
 * acked entry); an ack, which is never admitted, is refused. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <sodium.h>

#include "alloc_fail.h"
#include "proto/envelope.h"
#include "router/workers/turn_source.h"

static uint8_t *s_read(const char *name, size_t *len)
{
    char path[512];
    snprintf(path, sizeof path, "%s/turn_source/%s", KITH_TEST_DATA, name);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    static uint8_t buf[65536];
    *len = fread(buf, 1, sizeof buf, f);
    fclose(f);
    return buf;
}

static int s_from(const char *kind, const uint8_t *frame, size_t len, router_turn_source_t *src)
{
    router_inbox_entry_t e = {.seq = 7, .frame = (uint8_t *) frame, .frame_len = len};
    snprintf(e.kind, sizeof e.kind, "%s", kind);
    char why[160] = "";
    return router_turn_source_from_entry(&e, "comms", src, why, sizeof why);
}

/* Signs kind (taken) from a fresh key to another and encodes it. */
static uint8_t *s_envelope(cbor_item_t *kind, size_t *len)
{
    uint8_t pk[32], sk[64], to[32];
    crypto_sign_keypair(pk, sk);
    randombytes_buf(to, sizeof to);
    proto_envelope_reason_t why;
    proto_envelope_t *env = proto_envelope_new(NULL, pk, to, &kind, &why);
    assert_non_null(env);
    assert_int_equal(proto_envelope_sign(env, sk), 0);
    uint8_t *frame = NULL;
    size_t flen = 0;
    assert_int_equal(proto_envelope_encode_frame(env, &frame, &flen), 0);
    proto_envelope_destroy(&env);
    /* The inbox keeps the CBOR item, not the 4-byte length before it. */
    *len = flen - 4;
    memmove(frame, frame + 4, *len);
    return frame;
}

static void test_fenced_message_starts_a_turn(void **state)
{
    (void) state;
    size_t len;
    const uint8_t *frame = s_read("fenced.cbor", &len);
    router_turn_source_t src;
    assert_int_equal(s_from("incarnation_fenced_message", frame, len, &src), 0);
    assert_int_equal(src.envtype, PROTO_WORKER_ENVTYPE_INCARNATION_FENCED_MESSAGE);
    assert_true(src.envelope);
    assert_false(src.is_request);
    assert_string_equal(src.session, "comms");
    assert_true(src.len > 0 && src.content[src.len] == '\0');
    router_turn_source_clear(&src);
}

static void test_message_request_lifecycle(void **state)
{
    (void) state;
    size_t len;
    router_turn_source_t src;
    uint8_t *f = s_envelope(proto_kind_message("hello", 5, NULL, PROTO_HANDLING_NONE), &len);
    assert_int_equal(s_from("message", f, len, &src), 0);
    assert_int_equal(src.envtype, PROTO_WORKER_ENVTYPE_MESSAGE);
    assert_string_equal(src.content, "hello");
    router_turn_source_clear(&src);
    free(f);

    cbor_item_t *params = cbor_new_definite_map(0);
    f = s_envelope(proto_kind_request("review", 6, &params, NULL, PROTO_HANDLING_NONE), &len);
    assert_int_equal(s_from("request", f, len, &src), 0);
    assert_int_equal(src.envtype, PROTO_WORKER_ENVTYPE_REQUEST);
    assert_true(src.is_request);
    assert_string_equal(src.content, "request review: {}");
    router_turn_source_clear(&src);
    free(f);

    params = cbor_new_definite_map(0);
    f = s_envelope(proto_kind_lifecycle("mob.peer_added", 14, &params), &len);
    assert_int_equal(s_from("lifecycle", f, len, &src), 0);
    assert_int_equal(src.envtype, PROTO_WORKER_ENVTYPE_LIFECYCLE);
    assert_string_equal(src.content, "lifecycle mob.peer_added: {}");
    router_turn_source_clear(&src);
    free(f);
}

static void test_ack_is_refused(void **state)
{
    (void) state;
    uint8_t irt[16] = {1};
    size_t len;
    router_turn_source_t src;
    uint8_t *f = s_envelope(proto_kind_ack(irt), &len);
    assert_int_equal(s_from("ack", f, len, &src), -1);
    free(f);
}

/* A request whose params must become JSON, with each allocation failing
 * in turn: out of memory is NO_MEMORY (the entry waits for a retry), never
 * REFUSED (which drops an entry the sender was told is admitted). */
static void test_params_without_memory(void **state)
{
    (void) state;
    cbor_item_t *params = cbor_new_definite_map(2);
    cbor_item_t *arr = cbor_new_definite_array(2);
    assert_true(cbor_array_push(arr, cbor_move(cbor_build_uint8(1))));
    assert_true(cbor_array_push(arr, cbor_move(cbor_build_string("two"))));
    assert_true(cbor_map_add(params, (struct cbor_pair) {.key = cbor_move(cbor_build_string("a")),
                                                         .value = cbor_move(arr)}));
    assert_true(cbor_map_add(params, (struct cbor_pair) {.key = cbor_move(cbor_build_string("b")),
                                                         .value = cbor_move(cbor_build_bool(true))}));
    size_t len;
    uint8_t *f = s_envelope(proto_kind_request("review", 6, &params, NULL, PROTO_HANDLING_NONE), &len);
    unsigned failed = 1, no_memory = 0;
    for (long i = 0; failed && i < 10000; i++) {
        router_turn_source_t src;
        alloc_fail_arm(i);
        int rc = s_from("request", f, len, &src);
        failed = alloc_fail_disarm();
        if (rc == 0) {
            assert_string_equal(src.content, "request review: {\"a\":[1,\"two\"],\"b\":true}");
            router_turn_source_clear(&src);
        } else {
            assert_int_equal(rc, ROUTER_TURN_SOURCE_NO_MEMORY);
            assert_true(failed > 0);
            no_memory++;
        }
    }
    assert_int_equal(failed, 0);
    assert_true(no_memory > 0);
    free(f);
}

int main(void)
{
    if (sodium_init() < 0)
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fenced_message_starts_a_turn),
        cmocka_unit_test(test_message_request_lifecycle),
        cmocka_unit_test(test_ack_is_refused),
        cmocka_unit_test(test_params_without_memory),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
