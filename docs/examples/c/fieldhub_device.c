/*
 * A complete fieldhub device in C with libmosquitto and cJSON.
 *
 * Same behaviour as the Python reference (docs/examples/python/fieldhub_device.py):
 *   - falls back along `mqtt_urls` (home broker first, then the standbys), reconnecting with
 *     exponential backoff and full jitter;
 *   - retained "online" status with a Last Will of "offline";
 *   - telemetry every `interval` seconds;
 *   - twin: applies the (retained) desired document, reports what it applied;
 *   - commands: one ack per command id, the same ack again for a repeat.
 *
 * Build: apt-get install libmosquitto-dev libcjson-dev build-essential; make
 * Run:   fieldhub device create my-device --org my-org --json > creds.json
 *        ./fieldhub_device creds.json
 * For mqtts:// URLs with a private CA, set FIELDHUB_CA_FILE=/path/to/ca.crt (otherwise the
 * system's CA directory /etc/ssl/certs is used).
 */
#define _POSIX_C_SOURCE 200809L

#include <cjson/cJSON.h>
#include <mosquitto.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define FIRMWARE "example-c-1.0"
#define DEFAULT_INTERVAL_S 10.0
#define BACKOFF_BASE_S 1.0 /* first retry within 0-2 s, then 0-4 s, 0-8 s ... (full jitter) */
#define BACKOFF_CAP_S 60.0
#define REMEMBERED_COMMANDS 200
#define MAX_URLS 16
#define TOPIC_MAX 256

struct answer {
    char id[65];    /* command ids are at most 64 characters */
    char *ack_json; /* the final ack we sent, sent again for a repeat */
};

struct device {
    char *device_id, *username, *password;
    char *urls[MAX_URLS];
    int n_urls;
    double interval_s;
    long long applied_version; /* desired version last applied and reported; -1: none */
    struct answer answered[REMEMBERED_COMMANDS];
    int next_answer;
    long long seq;
    double started;
    int connack; /* -1 while waiting, else the CONNACK code */
    int lost;
};

static volatile sig_atomic_t running = 1;

static void on_signal(int sig) {
    (void)sig;
    running = 0;
}

static double monotonic_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void say(const char *format, ...) {
    char when[16];
    time_t now = time(NULL);
    struct tm tm_now;
    va_list args;
    strftime(when, sizeof when, "%H:%M:%S", localtime_r(&now, &tm_now));
    printf("%s ", when);
    va_start(args, format);
    vprintf(format, args);
    va_end(args);
    printf("\n");
    fflush(stdout);
}

/* Sleep, but wake up at once to stop. */
static void nap(double seconds) {
    double until = monotonic_s() + seconds;
    while (running && monotonic_s() < until) {
        struct timespec step = {0, 200 * 1000 * 1000};
        nanosleep(&step, NULL);
    }
}

static void publish_json(struct mosquitto *mosq, const char *topic, cJSON *body, int retain) {
    char *text = cJSON_PrintUnformatted(body);
    if (text != NULL) {
        mosquitto_publish(mosq, NULL, topic, (int)strlen(text), text, 1, retain);
        free(text);
    }
}

/* -- what the device publishes ------------------------------------------------------------ */
static void publish_telemetry(struct mosquitto *mosq, struct device *dev) {
    char topic[TOPIC_MAX];
    cJSON *reading = cJSON_CreateObject();
    cJSON *values = cJSON_AddObjectToObject(reading, "values");
    dev->seq += 1;
    cJSON_AddNumberToObject(reading, "ts", (double)now_ms());
    cJSON_AddNumberToObject(reading, "seq", (double)dev->seq);
    cJSON_AddNumberToObject(values, "temperature", 20.0 + (rand() % 400 - 200) / 100.0);
    cJSON_AddNumberToObject(values, "uptime_s", (double)(long)(monotonic_s() - dev->started));
    snprintf(topic, sizeof topic, "devices/%s/telemetry", dev->device_id);
    publish_json(mosq, topic, reading, 0);
    cJSON_Delete(reading);
}

/* -- what the device receives ------------------------------------------------------------- */
static void on_desired(struct mosquitto *mosq, struct device *dev, cJSON *desired) {
    char topic[TOPIC_MAX];
    cJSON *version = cJSON_GetObjectItemCaseSensitive(desired, "version");
    cJSON *state = cJSON_GetObjectItemCaseSensitive(desired, "state");
    cJSON *interval, *report, *applied;
    if (!cJSON_IsNumber(version) || !cJSON_IsObject(state)) {
        say("ignoring a desired document without version and state");
        return;
    }
    if ((long long)version->valuedouble == dev->applied_version) {
        return; /* the same document again after a reconnect: nothing new */
    }
    /* Apply what we can; report what we really run, so a refused value shows as a delta. */
    interval = cJSON_GetObjectItemCaseSensitive(state, "interval");
    if (cJSON_IsNumber(interval) && interval->valuedouble >= 1 && interval->valuedouble <= 3600) {
        dev->interval_s = interval->valuedouble;
    }
    applied = cJSON_Duplicate(state, 1);
    cJSON_DeleteItemFromObjectCaseSensitive(applied, "interval");
    cJSON_AddNumberToObject(applied, "interval", dev->interval_s);
    cJSON_DeleteItemFromObjectCaseSensitive(applied, "firmware");
    cJSON_AddStringToObject(applied, "firmware", FIRMWARE);
    /* version: the desired version applied; seq: our clock, so that two reports of one
     * version are applied in the order we sent them. */
    report = cJSON_CreateObject();
    cJSON_AddNumberToObject(report, "version", version->valuedouble);
    cJSON_AddNumberToObject(report, "seq", (double)now_ms());
    cJSON_AddItemToObject(report, "state", applied);
    snprintf(topic, sizeof topic, "devices/%s/twin/reported", dev->device_id);
    publish_json(mosq, topic, report, 0);
    cJSON_Delete(report);
    dev->applied_version = (long long)version->valuedouble;
    say("applied desired version %lld", dev->applied_version);
}

static void send_ack(struct mosquitto *mosq, struct device *dev, const char *id, const char *json) {
    char topic[TOPIC_MAX];
    snprintf(topic, sizeof topic, "devices/%s/commands/%s/ack", dev->device_id, id);
    mosquitto_publish(mosq, NULL, topic, (int)strlen(json), json, 1, false);
}

static void on_command(struct mosquitto *mosq, struct device *dev, const char *id, cJSON *command) {
    cJSON *name = cJSON_GetObjectItemCaseSensitive(command, "name");
    cJSON *params = cJSON_GetObjectItemCaseSensitive(command, "params");
    cJSON *seconds = cJSON_GetObjectItemCaseSensitive(params, "seconds");
    cJSON *answer = cJSON_CreateObject();
    cJSON *result;
    struct answer *slot;
    char error[160];
    char *text;
    int i;
    for (i = 0; i < REMEMBERED_COMMANDS; i++) {
        if (dev->answered[i].ack_json != NULL && strcmp(dev->answered[i].id, id) == 0) {
            /* Delivered twice: answer again, never run it twice. */
            send_ack(mosq, dev, id, dev->answered[i].ack_json);
            cJSON_Delete(answer);
            return;
        }
    }
    if (cJSON_IsString(name) && strcmp(name->valuestring, "ping") == 0) {
        cJSON_AddStringToObject(answer, "status", "succeeded");
        result = cJSON_AddObjectToObject(answer, "result");
        cJSON_AddTrueToObject(result, "pong");
        cJSON_AddNullToObject(answer, "error");
    } else if (cJSON_IsString(name) && strcmp(name->valuestring, "set_interval") == 0 &&
               cJSON_IsNumber(seconds)) {
        double wanted = seconds->valuedouble;
        dev->interval_s = wanted < 1 ? 1 : (wanted > 3600 ? 3600 : wanted);
        cJSON_AddStringToObject(answer, "status", "succeeded");
        result = cJSON_AddObjectToObject(answer, "result");
        cJSON_AddNumberToObject(result, "interval", dev->interval_s);
        cJSON_AddNullToObject(answer, "error");
    } else {
        snprintf(error, sizeof error, "unknown command '%.100s'",
                 cJSON_IsString(name) ? name->valuestring : "?");
        cJSON_AddStringToObject(answer, "status", "rejected");
        cJSON_AddNullToObject(answer, "result");
        cJSON_AddStringToObject(answer, "error", error);
    }
    text = cJSON_PrintUnformatted(answer);
    cJSON_Delete(answer);
    if (text == NULL) {
        return;
    }
    say("command %s (%s): %s", cJSON_IsString(name) ? name->valuestring : "?", id, text);
    send_ack(mosq, dev, id, text);
    /* Remember it in a ring of the last REMEMBERED_COMMANDS answers. */
    slot = &dev->answered[dev->next_answer];
    dev->next_answer = (dev->next_answer + 1) % REMEMBERED_COMMANDS;
    free(slot->ack_json);
    snprintf(slot->id, sizeof slot->id, "%s", id);
    slot->ack_json = text;
}

static void on_message(struct mosquitto *mosq, void *userdata, const struct mosquitto_message *msg) {
    struct device *dev = userdata;
    const char *last;
    cJSON *body;
    size_t len;
    if (msg->payloadlen == 0) {
        return; /* an empty retained message: the backend cleared a finished command */
    }
    body = cJSON_ParseWithLength(msg->payload, (size_t)msg->payloadlen);
    if (!cJSON_IsObject(body)) {
        say("ignoring a message that is not a JSON object on %s", msg->topic);
        cJSON_Delete(body);
        return;
    }
    len = strlen(msg->topic);
    last = strrchr(msg->topic, '/') + 1;
    if (len >= 13 && strcmp(msg->topic + len - 13, "/twin/desired") == 0) {
        on_desired(mosq, dev, body);
    } else if (strlen(last) <= 64) {
        on_command(mosq, dev, last, body);
    }
    cJSON_Delete(body);
}

static void on_connect(struct mosquitto *mosq, void *userdata, int rc) {
    (void)mosq;
    ((struct device *)userdata)->connack = rc;
}

static void on_disconnect(struct mosquitto *mosq, void *userdata, int rc) {
    (void)mosq;
    (void)rc;
    ((struct device *)userdata)->lost = 1;
}

/* -- connection ---------------------------------------------------------------------------- */
/* "mqtt://host:port" or "mqtts://host:port" into its parts; 0 if it is neither. */
static int parse_url(const char *url, char *host, size_t host_size, int *port, int *tls) {
    const char *rest, *colon;
    size_t host_len;
    if (strncmp(url, "mqtts://", 8) == 0) {
        *tls = 1;
        rest = url + 8;
    } else if (strncmp(url, "mqtt://", 7) == 0) {
        *tls = 0;
        rest = url + 7;
    } else {
        return 0;
    }
    colon = strrchr(rest, ':');
    host_len = colon ? (size_t)(colon - rest) : strcspn(rest, "/");
    if (host_len == 0 || host_len >= host_size) {
        return 0;
    }
    memcpy(host, rest, host_len);
    host[host_len] = '\0';
    *port = colon ? atoi(colon + 1) : (*tls ? 8883 : 1883);
    return *port > 0;
}

static struct mosquitto *connect_to(struct device *dev, const char *url) {
    char host[256], topic[TOPIC_MAX];
    int port, tls, rc;
    double deadline;
    struct mosquitto *mosq;
    if (!parse_url(url, host, sizeof host, &port, &tls)) {
        say("cannot connect to %s: not an mqtt:// or mqtts:// URL", url);
        return NULL;
    }
    /* Clean session: pending commands and the desired document are retained messages, so
     * the broker sends them on every subscribe. The broker forces the id to the username. */
    mosq = mosquitto_new(dev->device_id, true, dev);
    mosquitto_username_pw_set(mosq, dev->username, dev->password);
    snprintf(topic, sizeof topic, "devices/%s/status", dev->device_id);
    /* The broker publishes this for us if we vanish without saying goodbye. */
    mosquitto_will_set(mosq, topic, 7, "offline", 1, true);
    if (tls) {
        const char *ca_file = getenv("FIELDHUB_CA_FILE");
        mosquitto_tls_set(mosq, ca_file, ca_file ? NULL : "/etc/ssl/certs", NULL, NULL, NULL);
    }
    mosquitto_connect_callback_set(mosq, on_connect);
    mosquitto_disconnect_callback_set(mosq, on_disconnect);
    mosquitto_message_callback_set(mosq, on_message);
    dev->connack = -1;
    dev->lost = 0;
    rc = mosquitto_connect(mosq, host, port, 30);
    deadline = monotonic_s() + 10;
    while (rc == MOSQ_ERR_SUCCESS && dev->connack < 0 && !dev->lost && monotonic_s() < deadline) {
        rc = mosquitto_loop(mosq, 200, 1);
    }
    if (rc != MOSQ_ERR_SUCCESS || dev->connack != 0) {
        say("cannot connect to %s: %s", url,
            rc != MOSQ_ERR_SUCCESS ? mosquitto_strerror(rc)
                                   : (dev->connack > 0 ? mosquitto_connack_string(dev->connack)
                                                       : "no CONNACK"));
        mosquitto_destroy(mosq);
        return NULL;
    }
    say("connected to %s%s", url, url == dev->urls[0] ? " (home)" : " (standby)");
    mosquitto_publish(mosq, NULL, topic, 6, "online", 1, true);
    /* Retained messages deliver at once what waits for us. */
    snprintf(topic, sizeof topic, "devices/%s/twin/desired", dev->device_id);
    mosquitto_subscribe(mosq, NULL, topic, 1);
    snprintf(topic, sizeof topic, "devices/%s/commands/+", dev->device_id);
    mosquitto_subscribe(mosq, NULL, topic, 1);
    return mosq;
}

static void serve(struct mosquitto *mosq, struct device *dev) {
    double next_telemetry = monotonic_s();
    char topic[TOPIC_MAX];
    while (running) {
        if (monotonic_s() >= next_telemetry) {
            publish_telemetry(mosq, dev);
            next_telemetry = monotonic_s() + dev->interval_s;
        }
        if (mosquitto_loop(mosq, 200, 1) != MOSQ_ERR_SUCCESS || dev->lost) {
            say("connection lost");
            return;
        }
    }
    snprintf(topic, sizeof topic, "devices/%s/status", dev->device_id);
    mosquitto_publish(mosq, NULL, topic, 7, "offline", 1, true);
    mosquitto_loop(mosq, 200, 1);
    mosquitto_disconnect(mosq);
    mosquitto_loop(mosq, 200, 1);
}

static char *read_file(const char *path) {
    FILE *file = fopen(path, "rb");
    char *text;
    long size;
    if (file == NULL) {
        return NULL;
    }
    fseek(file, 0, SEEK_END);
    size = ftell(file);
    rewind(file);
    text = calloc(1, (size_t)size + 1);
    if (text != NULL && fread(text, 1, (size_t)size, file) != (size_t)size) {
        free(text);
        text = NULL;
    }
    fclose(file);
    return text;
}

static int load_credentials(const char *path, struct device *dev) {
    char *text = read_file(path);
    cJSON *creds = text ? cJSON_Parse(text) : NULL;
    cJSON *urls, *url, *item;
    free(text);
    if (!cJSON_IsObject(creds)) {
        cJSON_Delete(creds);
        return 0;
    }
#define STRING_FIELD(name, target)                                    \
    item = cJSON_GetObjectItemCaseSensitive(creds, name);             \
    if (!cJSON_IsString(item)) {                                      \
        cJSON_Delete(creds);                                          \
        return 0;                                                     \
    }                                                                 \
    target = strdup(item->valuestring);
    STRING_FIELD("device_id", dev->device_id)
    STRING_FIELD("username", dev->username)
    STRING_FIELD("password", dev->password)
#undef STRING_FIELD
    /* Home broker first, then the standbys; older credentials only have mqtt_url. */
    urls = cJSON_GetObjectItemCaseSensitive(creds, "mqtt_urls");
    cJSON_ArrayForEach(url, urls) {
        if (cJSON_IsString(url) && dev->n_urls < MAX_URLS) {
            dev->urls[dev->n_urls++] = strdup(url->valuestring);
        }
    }
    item = cJSON_GetObjectItemCaseSensitive(creds, "mqtt_url");
    if (dev->n_urls == 0 && cJSON_IsString(item)) {
        dev->urls[dev->n_urls++] = strdup(item->valuestring);
    }
    cJSON_Delete(creds);
    return dev->n_urls > 0;
}

static void free_device(struct device *dev) {
    int i;
    free(dev->device_id);
    free(dev->username);
    free(dev->password);
    for (i = 0; i < dev->n_urls; i++) {
        free(dev->urls[i]);
    }
    for (i = 0; i < REMEMBERED_COMMANDS; i++) {
        free(dev->answered[i].ack_json);
    }
}

int main(int argc, char **argv) {
    struct device dev;
    struct sigaction action;
    int attempt = 0; /* failed attempts since the last good connection */
    memset(&dev, 0, sizeof dev);
    if (argc != 2 || !load_credentials(argv[1], &dev)) {
        fprintf(stderr, "usage: %s CREDENTIALS.json (from fieldhub device create --json)\n",
                argv[0]);
        free_device(&dev);
        return 2;
    }
    dev.interval_s = DEFAULT_INTERVAL_S;
    dev.applied_version = -1;
    dev.started = monotonic_s();
    srand((unsigned)(now_ms() ^ getpid()));
    memset(&action, 0, sizeof action);
    action.sa_handler = on_signal;
    sigaction(SIGTERM, &action, NULL);
    sigaction(SIGINT, &action, NULL);
    mosquitto_lib_init();
    while (running) {
        /* Each attempt takes the next URL: home first, then each standby, then home again. */
        const char *url = dev.urls[attempt % dev.n_urls];
        struct mosquitto *mosq;
        if (attempt > 0) {
            double cap = BACKOFF_BASE_S * (double)(1LL << (attempt < 20 ? attempt : 20));
            double delay = (cap < BACKOFF_CAP_S ? cap : BACKOFF_CAP_S) * rand() / RAND_MAX;
            say("retrying in %.1f s with %s", delay, url);
            nap(delay);
            if (!running) {
                break;
            }
        }
        mosq = connect_to(&dev, url);
        if (mosq == NULL) {
            attempt += 1;
            continue;
        }
        attempt = 0;
        serve(mosq, &dev); /* returns when the connection is lost or we stop */
        mosquitto_destroy(mosq);
    }
    mosquitto_lib_cleanup();
    free_device(&dev);
    say("stopped");
    return 0;
}
