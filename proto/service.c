/* org.varlink.service: the introspection interface every Varlink server
 * offers (GetInfo, GetInterfaceDescription). */
#include <errno.h>
#include <json-c/json.h>

#include "macro.h"
#include "server-internal.h"
#include "varlink.h"

const char vl_service_description[] =
	"# The Varlink Service Interface is provided by every varlink service. It\n"
	"# describes the service and the interfaces it implements.\n"
	"interface org.varlink.service\n"
	"\n"
	"# Get a list of all the interfaces a service provides and information\n"
	"# about the implementation.\n"
	"method GetInfo() -> (\n"
	"  vendor: string,\n"
	"  product: string,\n"
	"  version: string,\n"
	"  url: string,\n"
	"  interfaces: []string\n"
	")\n"
	"\n"
	"# Get the description of an interface that is implemented by this service.\n"
	"method GetInterfaceDescription(interface: string) -> (description: string)\n"
	"\n"
	"# The requested interface was not found.\n"
	"error InterfaceNotFound (interface: string)\n"
	"\n"
	"# The requested method was not found\n"
	"error MethodNotFound (method: string)\n"
	"\n"
	"# The interface defines the requested method, but the service does not\n"
	"# implement it.\n"
	"error MethodNotImplemented (method: string)\n"
	"\n"
	"# One of the passed parameters is invalid.\n"
	"error InvalidParameter (parameter: string)\n"
	"\n"
	"# Client is denied access\n"
	"error PermissionDenied ()\n"
	"\n"
	"# Method is expected to be called with 'more' set to true, but wasn't\n"
	"error ExpectedMore ()\n";

static const char *str_or_empty(const char *s) { return s ? s : ""; }

static int method_get_info(struct vl_call *call, struct json_object *params, void *userdata) {
	struct vl_server *s = userdata;
	const struct vl_server_info *info = vl_server_get_info(s);
	struct json_object *r = json_object_new_object();
	struct json_object *list = json_object_new_array();

	json_object_object_add(r, "vendor", json_object_new_string(str_or_empty(info->vendor)));
	json_object_object_add(r, "product", json_object_new_string(str_or_empty(info->product)));
	json_object_object_add(r, "version", json_object_new_string(str_or_empty(info->version)));
	json_object_object_add(r, "url", json_object_new_string(str_or_empty(info->url)));
	for (size_t i = 0; i < vl_server_n_interfaces(s); i++)
		json_object_array_add(list, json_object_new_string(vl_server_interface(s, i)->name));
	json_object_object_add(r, "interfaces", list);
	return vl_call_reply(call, r);
}

static int method_get_interface_description(struct vl_call *call, struct json_object *params,
					    void *userdata) {
	struct vl_server *s = userdata;
	struct json_object *v;
	json_object_object_get_ex(params, "interface", &v);
	const char *name = json_object_get_string(v);

	for (size_t i = 0; i < vl_server_n_interfaces(s); i++) {
		const struct vl_interface *iface = vl_server_interface(s, i);
		if (streq(iface->name, name)) {
			struct json_object *r = json_object_new_object();
			json_object_object_add(r, "description",
					       json_object_new_string(iface->description));
			return vl_call_reply(call, r);
		}
	}
	struct json_object *e = json_object_new_object();
	json_object_object_add(e, "interface", json_object_new_string(name));
	return vl_call_error(call, VL_ERROR_INTERFACE_NOT_FOUND, e);
}

static const struct vl_param params_get_interface_description[] = {
	{"interface", VL_STRING, VL_MANDATORY},
	{},
};

static const struct vl_method service_methods[] = {
	{.name = "GetInfo", .fn = method_get_info},
	{.name = "GetInterfaceDescription", .fn = method_get_interface_description,
	 .params = params_get_interface_description},
	{},
};

static const struct vl_interface service_interface = {
	.name = "org.varlink.service",
	.description = vl_service_description,
	.methods = service_methods,
};

int vl_service_register(struct vl_server *s) {
	return vl_server_add_interface(s, &service_interface, s);
}
