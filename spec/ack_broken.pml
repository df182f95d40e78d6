/*
 * spec/ack_broken.pml — spec/ack.pml with the ack sent on receipt, before
 * admission (Meerkat's old order, which DESIGN §8 rules out). spin must
 * report P1 (acked ⇒ durable) for it; tests/integration/test_spin.sh fails
 * if it does not, so the check of ack.pml cannot pass vacuously. With
 * -DNO_P1 the local check is off and spin must still find the consequence:
 * an acked envelope that never reached the inbox (P2).
 */
#define BROKEN_ACK_EARLY
#include "ack.pml"
