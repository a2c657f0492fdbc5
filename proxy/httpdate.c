/*
 * httpdate.c - IMF-fixdate from the Unix time without gmtime_r (see
 * httpdate.h for why).
 */
#include "detour/httpdate.h"

/* The last second of 9999-12-31, where four-digit years end. */
#define MAX_SEC 253402300799LL

static void put2(char *p, unsigned v)
{
    p[0] = (char)('0' + v / 10);
    p[1] = (char)('0' + v % 10);
}

size_t dt_httpdate_format(int64_t sec, char out[DT_HTTPDATE_LEN + 1])
{
    static const char days[] = "ThuFriSatSunMonTueWed"; /* 1970-01-01 was a Thursday */
    static const char months[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
    if (sec < 0)
        sec = 0;
    if (sec > MAX_SEC)
        sec = MAX_SEC;
    int64_t day = sec / 86400;
    unsigned tod = (unsigned)(sec % 86400);

    /* The civil date of a day count, counting 400-year eras from 1 March
     * 0000 so that a leap day ends its year (H. Hinnant's civil_from_days). */
    int64_t z = day + 719468;
    int64_t era = z / 146097;
    unsigned doe = (unsigned)(z - era * 146097);
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    unsigned mp = (5 * doy + 2) / 153;
    unsigned mday = doy - (153 * mp + 2) / 5 + 1;
    unsigned month = mp < 10 ? mp + 3 : mp - 9; /* 1..12 */
    unsigned year = (unsigned)(yoe + era * 400) + (month <= 2);

    memcpy(out, days + (day % 7) * 3, 3);
    out[3] = ',';
    out[4] = ' ';
    put2(out + 5, mday);
    out[7] = ' ';
    memcpy(out + 8, months + (month - 1) * 3, 3);
    out[11] = ' ';
    put2(out + 12, year / 100);
    put2(out + 14, year % 100);
    out[16] = ' ';
    put2(out + 17, tod / 3600);
    out[19] = ':';
    put2(out + 20, tod / 60 % 60);
    out[22] = ':';
    put2(out + 23, tod % 60);
    memcpy(out + 25, " GMT", 5); /* with the NUL */
    return DT_HTTPDATE_LEN;
}

const char *dt_httpdate_at(dt_httpdate *d, int64_t now)
{
    if (d->sec != now || d->text[0] == '\0') {
        dt_httpdate_format(now, d->text);
        d->sec = now;
    }
    return d->text;
}
