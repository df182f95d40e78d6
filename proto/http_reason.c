/* proto/http_reason.c — the names and HTTP statuses of the parser's refusal
 * reasons, and how a failure of either grammar maps to a reason. */
#include "proto/http_internal.h"

static const struct {
    const char *name; /* stable snake_case code, for logs and JSON errors */
    int status;       /* what the gateway answers */
} s_reasons[PROTO_HTTP_REASON_COUNT] = {
    [PROTO_HTTP_OK]                      = { "ok", 200 },
    [PROTO_HTTP_ERR_METHOD]              = { "bad_method", 400 },
    [PROTO_HTTP_ERR_TARGET]              = { "bad_target", 400 },
    [PROTO_HTTP_ERR_TARGET_TOO_LONG]     = { "target_too_long", 414 },
    [PROTO_HTTP_ERR_VERSION]             = { "bad_version", 400 },
    [PROTO_HTTP_ERR_VERSION_UNSUPPORTED] = { "version_not_supported", 505 },
    [PROTO_HTTP_ERR_BARE_CR]             = { "bare_cr", 400 },
    [PROTO_HTTP_ERR_BARE_LF]             = { "bare_lf", 400 },
    [PROTO_HTTP_ERR_FIELD_NAME]          = { "bad_field_name", 400 },
    [PROTO_HTTP_ERR_FIELD_VALUE]         = { "bad_field_value", 400 },
    [PROTO_HTTP_ERR_SPACE_BEFORE_COLON]  = { "space_before_colon", 400 },
    [PROTO_HTTP_ERR_OBS_FOLD]            = { "obs_fold", 400 },
    [PROTO_HTTP_ERR_HEAD_TOO_LARGE]      = { "head_too_large", 431 },
    [PROTO_HTTP_ERR_TOO_MANY_FIELDS]     = { "too_many_fields", 431 },
    [PROTO_HTTP_ERR_HOST_MISSING]        = { "host_missing", 400 },
    [PROTO_HTTP_ERR_HOST_DUPLICATE]      = { "host_duplicate", 400 },
    [PROTO_HTTP_ERR_HOST_INVALID]        = { "host_invalid", 400 },
    [PROTO_HTTP_ERR_CL_INVALID]          = { "content_length_invalid", 400 },
    [PROTO_HTTP_ERR_CL_OVERFLOW]         = { "content_length_overflow", 400 },
    [PROTO_HTTP_ERR_CL_DUPLICATE]        = { "content_length_duplicate", 400 },
    [PROTO_HTTP_ERR_CL_CONFLICT]         = { "content_length_conflict", 400 },
    [PROTO_HTTP_ERR_CL_WITH_TE]          = { "content_length_with_transfer_encoding", 400 },
    [PROTO_HTTP_ERR_TE_INVALID]          = { "transfer_encoding_invalid", 400 },
    [PROTO_HTTP_ERR_TE_DUPLICATE]        = { "transfer_encoding_duplicate", 400 },
    [PROTO_HTTP_ERR_TE_NOT_CHUNKED]      = { "transfer_encoding_not_chunked", 400 },
    [PROTO_HTTP_ERR_TE_UNSUPPORTED]      = { "transfer_encoding_unsupported", 501 },
    [PROTO_HTTP_ERR_TE_HTTP10]           = { "transfer_encoding_in_http10", 400 },
    [PROTO_HTTP_ERR_BODY_TOO_LARGE]      = { "body_too_large", 413 },
    [PROTO_HTTP_ERR_CHUNK_SIZE]          = { "bad_chunk_size", 400 },
    [PROTO_HTTP_ERR_CHUNK_SIZE_OVERFLOW] = { "chunk_size_overflow", 400 },
    [PROTO_HTTP_ERR_CHUNK_EXT]           = { "bad_chunk_ext", 400 },
    [PROTO_HTTP_ERR_CHUNK_EXT_TOO_LARGE] = { "chunk_ext_too_large", 400 },
    [PROTO_HTTP_ERR_CHUNK_DATA_END]      = { "bad_chunk_data_end", 400 },
    [PROTO_HTTP_ERR_TRAILER_TOO_LARGE]   = { "trailer_too_large", 431 },
    [PROTO_HTTP_ERR_USAGE]               = { "usage", 500 },
};

const char *proto_http_reason_str(proto_http_reason_t reason)
{
    if ((unsigned) reason >= PROTO_HTTP_REASON_COUNT)
        return "unknown";
    return s_reasons[reason].name;
}

int proto_http_reason_status(proto_http_reason_t reason)
{
    if ((unsigned) reason >= PROTO_HTTP_REASON_COUNT)
        return 500;
    return s_reasons[reason].status;
}

/* Every CR either grammar accepts must be followed by LF, and no part but
 * a line end takes LF; so the octet before a failure, or the failing one,
 * says whether a line ending was at fault before the part does. */
proto_http_reason_t proto_http_syntax_reason(proto_http_ctx_t ctx, unsigned char c,
                                             unsigned char prev)
{
    bool ws = c == ' ' || c == '\t';
    if (prev == '\r')
        return PROTO_HTTP_ERR_BARE_CR;
    if (c == '\n')
        return PROTO_HTTP_ERR_BARE_LF;
    switch (ctx) {
    case PROTO_HTTP_CTX_METHOD:
        return PROTO_HTTP_ERR_METHOD;
    case PROTO_HTTP_CTX_TARGET:
        return PROTO_HTTP_ERR_TARGET;
    case PROTO_HTTP_CTX_VERSION:
        return PROTO_HTTP_ERR_VERSION;
    case PROTO_HTTP_CTX_LINE_START:
        return ws ? PROTO_HTTP_ERR_OBS_FOLD : PROTO_HTTP_ERR_FIELD_NAME;
    case PROTO_HTTP_CTX_FIELD_NAME:
        return ws ? PROTO_HTTP_ERR_SPACE_BEFORE_COLON : PROTO_HTTP_ERR_FIELD_NAME;
    case PROTO_HTTP_CTX_FIELD_VALUE:
        return PROTO_HTTP_ERR_FIELD_VALUE;
    case PROTO_HTTP_CTX_CHUNK_SIZE:
        return PROTO_HTTP_ERR_CHUNK_SIZE;
    case PROTO_HTTP_CTX_CHUNK_EXT:
        return PROTO_HTTP_ERR_CHUNK_EXT;
    case PROTO_HTTP_CTX_CHUNK_DATA_END:
        return PROTO_HTTP_ERR_CHUNK_DATA_END;
    }
    return PROTO_HTTP_ERR_USAGE;
}
