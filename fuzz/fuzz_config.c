/* fuzz/fuzz_config.c — config.json parsing from memory (router_config_parse).
 * Beyond not crashing: an accepted config written back out with
 * router_config_to_json must parse again to the same JSON. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "router/state/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    router_config_t cfg, again;
    char err[ROUTER_CONFIG_ERR_MAX];
    if (router_config_parse(&cfg, (const char *) data, size, err, sizeof err) != 0)
        return 0;
    char *json = router_config_to_json(&cfg);
    if (!json)
        abort();
    if (router_config_parse(&again, json, strlen(json), err, sizeof err) != 0)
        abort(); /* kith wrote a config it refuses */
    char *json2 = router_config_to_json(&again);
    if (!json2 || strcmp(json, json2) != 0)
        abort(); /* the round trip changed a value */
    free(json);
    free(json2);
    return 0;
}
