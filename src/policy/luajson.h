/* luajson.h -- cJSON values as Lua values, one way for every caller.
 *
 * The policy runtime hands token claims and tool arguments to rules as
 * tables, and the Lua module hands parsed bodies and claims to specs; all
 * of them convert through here so a number, a null or a duplicate key
 * means the same thing everywhere. */
#ifndef SG_LUAJSON_H
#define SG_LUAJSON_H

#include <cjson/cJSON.h>
#include <lua.h>

#define SG_LUAJSON_MAX_DEPTH                                                                       \
    512 /* = SG_JSON_MAX_DEPTH_CAP, the deepest body the pre-scan allows                           \
         */

/* Pushes j: objects and arrays become tables, integral numbers within
 * +-2^53 become integers, other numbers floats, null becomes nil (or, with
 * null_sentinel set, a NULL light userdata so specs can see it). Of
 * duplicate object keys the first wins, as with cJSON's own lookups.
 * Raises a Lua error when nested deeper than SG_LUAJSON_MAX_DEPTH or out of
 * stack; call it where a Lua error is caught (a protected call or a
 * binding). */
void sg_lua_push_json(lua_State *L, const cJSON *j, int null_sentinel);

/* Converts the Lua value at idx to JSON, for data written in Lua (policy
 * test cases): strings, booleans, integers and floats as themselves; a
 * table whose keys are exactly 1..n (n > 0) becomes an array, any other
 * table an object whose keys must all be strings (so an empty table is
 * `{}`). Uses raw access only (no metamethod runs) and never raises.
 * Returns a new cJSON value (cJSON_Delete it), or NULL with a message in
 * err for a function, a non-string key, NaN/inf, nesting deeper than
 * SG_LUAJSON_MAX_DEPTH or an allocation failure. */
cJSON *sg_lua_to_json(lua_State *L, int idx, char *err, size_t errlen);

#endif
